//! What the writer applies: the [`Command`] list, the [`Apply`] trait every
//! command implements, and the two kinds of failure.
//!
//! # Adding a command
//!
//! Write a type for it beside the tables it touches (as `log::Publish`,
//! `subscription::Results`, `registry::Deploy`) and implement [`Apply`]
//! for it: `check` reads and encodes, `write` writes and answers. Then add
//! one variant to [`Command`] and its arm to [`Command::order`], and send it
//! from a `Store` method. Nothing else names the commands.
//!
//! # Failures
//!
//! A command fails alone or takes its group down with it:
//!
//! - [`Failure::Refused`]: a logic failure of this command (a record that
//!   does not decode or encode, a missing entry). Only `check` can refuse,
//!   and `check` writes nothing: the tables every group opens reach it
//!   through shared references, so the compiler holds it to reading them (a
//!   table a check opens itself, as the deploy's check does, it only
//!   reads). The caller gets the error; the other commands of the group are
//!   applied and committed as if it had not been sent.
//! - [`Fatal`]: redb failed (I/O, a full disk, a failed commit). The
//!   transaction is abandoned, every command of the group is answered with
//!   the error, and the store refuses writes until a retry commits (the
//!   writer reopens the database and backs off first).
//!
//! redb cannot undo one command inside a group instead: it refuses a
//! savepoint in a transaction that has already written
//! (`SavepointError::InvalidSavepoint`), so a savepoint per command would
//! mean a transaction per command, and group commit would be gone.

use std::mem;

use super::StoreError;
use super::aggregate::Execute;
use super::codec::{Encoded, Records};
use super::consumer;
use super::lifecycle::DeleteSubscription;
use super::log::Publish;
use super::registry::Deploy;
use super::source::{SourceAppend, SourceRedrive};
use super::state::StateOp;
use super::stream::StreamAppend;
use super::subscription::{Purge, Redrive, Results};
use super::writer::Writes;

/// A reply callback: called once, from the writer thread, after the commit.
pub(crate) type Reply<T> = Box<dyn FnOnce(Result<T, StoreError>) + Send>;

/// One kind of store command: what it reads and checks, then what it
/// writes.
pub(super) trait Apply: Send + 'static {
    /// What the caller is answered once the group has committed.
    type Answer: Send + 'static;
    /// What `check` found out, for `write` (a version number, the entries
    /// to delete).
    type Checked;

    /// Read what the command needs and encode every record it will store
    /// (into `encoded`, in the order `write` takes them), refusing the
    /// command if it cannot be applied. Writes nothing.
    ///
    /// # Errors
    ///
    /// [`Failure::Refused`] to fail this command alone, [`Failure::Fatal`]
    /// when reading failed.
    fn check(&self, w: &Writes<'_>, encoded: &mut Encoded) -> Result<Self::Checked, Failure>;

    /// Write the command and say what to answer.
    ///
    /// # Errors
    ///
    /// Only storage errors: a command that got here cannot be refused.
    fn write(self, checked: Self::Checked, w: &mut Writes<'_>, records: Records<'_>) -> Result<Self::Answer, Fatal>;
}

/// Why `check` stopped a command.
#[derive(Debug)]
pub(super) enum Failure {
    /// This command cannot be applied; the caller gets the error and the
    /// group goes on.
    Refused(StoreError),
    /// The transaction failed; so does the group.
    Fatal(Fatal),
}

/// A storage failure inside a group's transaction: the group fails, and the
/// store refuses writes until a retry commits.
#[derive(Debug)]
pub(super) struct Fatal(pub(super) StoreError);

impl Fatal {
    /// A write that asks for a record its check did not encode: a bug in
    /// that command. The group fails rather than store the wrong bytes.
    pub(super) fn unchecked() -> Self {
        Self(StoreError::Storage("a store command wrote a record it had not checked (a bug in Weir)".into()))
    }
}

macro_rules! fatal_from_redb {
    ($($error:ty),*) => {$(
        impl From<$error> for Fatal {
            fn from(e: $error) -> Self {
                Self(super::error::storage(e))
            }
        }

        impl From<$error> for Failure {
            fn from(e: $error) -> Self {
                Self::Fatal(Fatal::from(e))
            }
        }
    )*};
}

fatal_from_redb!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::SetDurabilityError,
    redb::CommitError
);

impl Failure {
    /// The error inside, for a reader that shares a check's lookups.
    pub(super) fn into_error(self) -> StoreError {
        match self {
            Self::Refused(e) | Self::Fatal(Fatal(e)) => e,
        }
    }
}

impl From<Fatal> for Failure {
    fn from(e: Fatal) -> Self {
        Self::Fatal(e)
    }
}

/// Errors of the command's own making (the codec's) refuse it.
impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Self::Refused(e)
    }
}

/// A command and the caller waiting for its answer.
pub(super) struct Order<C: Apply> {
    state: State<C>,
}

enum State<C: Apply> {
    /// Sent, not applied yet.
    Waiting(C, Reply<C::Answer>),
    /// Applied in the open group: the command's own result, sent once the
    /// group has committed.
    Applied(Result<C::Answer, StoreError>, Reply<C::Answer>),
    /// Its write failed: it gets the group's error.
    Broken(Reply<C::Answer>),
    Answered,
}

impl<C: Apply> Order<C> {
    pub(super) fn new(command: C, reply: Reply<C::Answer>) -> Self {
        Self { state: State::Waiting(command, reply) }
    }
}

/// An [`Order`] of any command, as the writer handles it.
pub(super) trait Pending {
    /// Check and write the command in the group's transaction, keeping its
    /// answer (or its refusal) for after the commit.
    ///
    /// # Errors
    ///
    /// [`Fatal`]: the group fails.
    fn apply(&mut self, w: &mut Writes<'_>, encoded: &mut Encoded) -> Result<(), Fatal>;

    /// Answer the caller, once: `group` is how the group ended (or why the
    /// command never reached one). A refused command gets its own error
    /// either way.
    fn answer(&mut self, group: Result<(), &StoreError>);
}

impl<C: Apply> Pending for Order<C> {
    fn apply(&mut self, w: &mut Writes<'_>, encoded: &mut Encoded) -> Result<(), Fatal> {
        let (command, reply) = match mem::replace(&mut self.state, State::Answered) {
            State::Waiting(command, reply) => (command, reply),
            applied => {
                self.state = applied;
                return Ok(());
            }
        };
        encoded.clear();
        let result = match command.check(w, encoded) {
            Ok(checked) => command.write(checked, w, encoded.records()).map(Ok),
            Err(Failure::Refused(e)) => Ok(Err(e)),
            Err(Failure::Fatal(e)) => Err(e),
        };
        match result {
            Ok(answer) => {
                self.state = State::Applied(answer, reply);
                Ok(())
            }
            Err(fatal) => {
                self.state = State::Broken(reply);
                Err(fatal)
            }
        }
    }

    fn answer(&mut self, group: Result<(), &StoreError>) {
        match (mem::replace(&mut self.state, State::Answered), group) {
            (State::Applied(Err(refused), reply), _) => reply(Err(refused)),
            (State::Applied(Ok(answer), reply), Ok(())) => reply(Ok(answer)),
            (State::Applied(Ok(_), reply) | State::Waiting(_, reply) | State::Broken(reply), Err(e)) => {
                reply(Err(e.clone()));
            }
            // Not reached: a group commits only when every command in it
            // was applied.
            (State::Waiting(_, reply) | State::Broken(reply), Ok(())) => reply(Err(StoreError::Closed)),
            (State::Answered, _) => {}
        }
    }
}

/// Every command the writer takes.
pub(super) enum Command {
    /// Append events: [`Store::publish`](super::Store::publish).
    Publish(Order<Publish>),
    /// A subscription's outcomes: [`Store::submit`](super::Store::submit).
    Results(Order<Results>),
    /// DLQ entry back to parked: [`Store::redrive`](super::Store::redrive).
    Redrive(Order<Redrive>),
    /// Delete DLQ entries: [`Store::purge_blocking`](super::Store::purge_blocking).
    Purge(Order<Purge>),
    /// Record a deployed module: [`Store::deploy_blocking`](super::Store::deploy_blocking).
    Deploy(Order<Deploy>),
    /// Append to an entity stream at an expected revision: [`Store::append_stream`](super::Store::append_stream).
    StreamAppend(Order<StreamAppend>),
    /// A command an aggregate decided: [`Store::execute_command`](super::Store::execute_command).
    Execute(Order<Execute>),
    /// A source's batch with its positions: [`Store::source_append`](super::Store::source_append).
    SourceAppend(Order<SourceAppend>),
    /// A dead-lettered source message appended: [`Store::source_redrive_blocking`](super::Store::source_redrive_blocking).
    SourceRedrive(Order<SourceRedrive>),
    /// Handler state outside a subscription's results: a replay's shadow
    /// (`store/state.rs`).
    State(Order<StateOp>),
    /// Nothing, answered after the commit: [`Store::sync`](super::Store::sync).
    Sync(Order<Barrier>),
    /// Durable consumers' commands (`store/consumer.rs`).
    ConsumerPut(Order<consumer::Put>),
    ConsumerDelete(Order<consumer::Delete>),
    ConsumerReset(Order<consumer::Reset>),
    ConsumerFetch(Order<consumer::Fetch>),
    ConsumerAck(Order<consumer::Ack>),
    ConsumerRedrive(Order<consumer::Redrive>),
    /// Part of a subscription's data: [`Store::delete_subscription_blocking`](super::Store::delete_subscription_blocking).
    DeleteSubscription(Order<DeleteSubscription>),
    /// Due timers fire: [`Store::fire_timers_blocking`](super::Store::fire_timers_blocking).
    FireTimers(Order<super::timer::Fire>),
}

impl Command {
    /// The order inside, as the writer handles every command.
    pub(super) fn order(&mut self) -> &mut dyn Pending {
        match self {
            Self::Publish(order) => order,
            Self::Results(order) => order,
            Self::Redrive(order) => order,
            Self::Purge(order) => order,
            Self::Deploy(order) => order,
            Self::StreamAppend(order) => order,
            Self::Execute(order) => order,
            Self::SourceAppend(order) => order,
            Self::SourceRedrive(order) => order,
            Self::State(order) => order,
            Self::Sync(order) => order,
            Self::ConsumerPut(order) => order,
            Self::ConsumerDelete(order) => order,
            Self::ConsumerReset(order) => order,
            Self::ConsumerFetch(order) => order,
            Self::ConsumerAck(order) => order,
            Self::ConsumerRedrive(order) => order,
            Self::DeleteSubscription(order) => order,
            Self::FireTimers(order) => order,
        }
    }
}

/// Writes nothing: answered once everything sent before it has committed.
pub(super) struct Barrier;

impl Apply for Barrier {
    type Answer = ();
    type Checked = ();

    fn check(&self, _: &Writes<'_>, _: &mut Encoded) -> Result<(), Failure> {
        Ok(())
    }

    fn write(self, (): (), _: &mut Writes<'_>, _: Records<'_>) -> Result<(), Fatal> {
        Ok(())
    }
}

/// The next record a command's check encoded.
pub(super) fn next_record<'a>(records: &mut Records<'a>) -> Result<&'a [u8], Fatal> {
    records.next().ok_or_else(Fatal::unchecked)
}
