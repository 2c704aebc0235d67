//! The attribute macros of `weir-sdk`. Use them through `weir_sdk::handler`
//! and `weir_sdk::init`; the generated code names `::weir_sdk`.
//!
//! Misuse is reported as a compile error pointing at the offending tokens
//! (`syn::Error::into_compile_error`), never as a macro panic.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprArray, ExprLit, ItemFn, Lit, LitStr, Meta, Token};

/// See `weir_sdk::handler`.
#[proc_macro_attribute]
pub fn handler(args: TokenStream, item: TokenStream) -> TokenStream {
    expand_handler(args.into(), item.into()).unwrap_or_else(syn::Error::into_compile_error).into()
}

/// See `weir_sdk::aggregate`.
#[proc_macro_attribute]
pub fn aggregate(args: TokenStream, item: TokenStream) -> TokenStream {
    expand_aggregate(args.into(), item.into()).unwrap_or_else(syn::Error::into_compile_error).into()
}

/// See `weir_sdk::upcaster`.
#[proc_macro_attribute]
pub fn upcaster(args: TokenStream, item: TokenStream) -> TokenStream {
    expand_upcaster(args.into(), item.into()).unwrap_or_else(syn::Error::into_compile_error).into()
}

/// See `weir_sdk::init`.
#[proc_macro_attribute]
pub fn init(args: TokenStream, item: TokenStream) -> TokenStream {
    expand_init(args.into(), item.into()).unwrap_or_else(syn::Error::into_compile_error).into()
}

#[derive(Default)]
struct Description {
    name: Option<LitStr>,
    version: Option<LitStr>,
    description: Option<LitStr>,
    topics: Vec<LitStr>,
    schema_versions: Vec<syn::LitInt>,
}

fn parse_description(args: TokenStream2) -> syn::Result<Description> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args)?;
    let mut out = Description::default();
    for meta in metas {
        let Meta::NameValue(nv) = &meta else {
            return Err(syn::Error::new(
                meta.span(),
                "expected `key = value`; the handler attribute takes `name`, `version`, `description`, `topics` and `schema_versions`",
            ));
        };
        let key = nv.path.get_ident().map(ToString::to_string).unwrap_or_default();
        match key.as_str() {
            "name" => out.name = Some(string(&nv.value, "name")?),
            "version" => out.version = Some(string(&nv.value, "version")?),
            "description" => out.description = Some(string(&nv.value, "description")?),
            "topics" => {
                out.topics =
                    array(&nv.value, "topics")?.iter().map(|e| string(e, "topics")).collect::<syn::Result<_>>()?;
            }
            "schema_versions" => {
                out.schema_versions = array(&nv.value, "schema_versions")?
                    .iter()
                    .map(|e| match e {
                        Expr::Lit(ExprLit { lit: Lit::Int(i), .. }) => Ok(i.clone()),
                        other => Err(syn::Error::new(
                            other.span(),
                            "`schema_versions` takes integer literals, e.g. `[1, 2]`",
                        )),
                    })
                    .collect::<syn::Result<_>>()?;
            }
            _ => {
                return Err(syn::Error::new(
                    nv.path.span(),
                    format!(
                        "unknown handler argument `{key}`; expected one of `name`, `version`, `description`, `topics`, `schema_versions`"
                    ),
                ));
            }
        }
    }
    Ok(out)
}

fn string(expr: &Expr, key: &str) -> syn::Result<LitStr> {
    match expr {
        Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => Ok(s.clone()),
        other => Err(syn::Error::new(other.span(), format!("`{key}` takes a string literal"))),
    }
}

fn array<'a>(expr: &'a Expr, key: &str) -> syn::Result<&'a Punctuated<Expr, Token![,]>> {
    match expr {
        Expr::Array(ExprArray { elems, .. }) => Ok(elems),
        other => Err(syn::Error::new(other.span(), format!("`{key}` takes an array, e.g. `{key} = [...]`"))),
    }
}

/// Checks shared by both attributes: a plain, non-async, non-generic,
/// free function with the expected number of arguments.
fn check_fn(item: TokenStream2, what: &str, arity: usize, signature: &str) -> syn::Result<ItemFn> {
    let func: ItemFn = syn::parse2(item).map_err(|e| {
        syn::Error::new(e.span(), format!("#[weir_sdk::{what}] must be placed on a function `{signature}`"))
    })?;
    let sig = &func.sig;
    if let Some(a) = &sig.asyncness {
        return Err(syn::Error::new(
            a.span(),
            format!(
                "#[weir_sdk::{what}] functions cannot be async: Wasm handlers run to completion; expected `{signature}`"
            ),
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            format!("#[weir_sdk::{what}] functions cannot be generic; expected `{signature}`"),
        ));
    }
    if let Some(r) = sig.inputs.iter().find(|a| matches!(a, syn::FnArg::Receiver(_))) {
        return Err(syn::Error::new(
            r.span(),
            format!("#[weir_sdk::{what}] must be on a free function, not a method; expected `{signature}`"),
        ));
    }
    if sig.inputs.len() != arity {
        let span = if sig.inputs.is_empty() { sig.ident.span() } else { sig.inputs.span() };
        return Err(syn::Error::new(
            span,
            format!(
                "#[weir_sdk::{what}] function takes {arity} argument(s), found {}; expected `{signature}`",
                sig.inputs.len()
            ),
        ));
    }
    if matches!(sig.output, syn::ReturnType::Default) {
        return Err(syn::Error::new(
            sig.ident.span(),
            format!("#[weir_sdk::{what}] function must return a Result; expected `{signature}`"),
        ));
    }
    Ok(func)
}

fn expand_handler(args: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    const SIG: &str = "fn(&Event, &mut Context) -> Result<Vec<Emit>, HandlerError>";
    let desc = parse_description(args)?;
    let func = check_fn(item, "handler", 2, SIG)?;
    let ident = &func.sig.ident;
    let name = desc.name.map_or_else(|| quote!(::core::env!("CARGO_PKG_NAME")), |s| quote!(#s));
    let version = desc.version.map_or_else(|| quote!(::core::env!("CARGO_PKG_VERSION")), |s| quote!(#s));
    let description = desc.description.map_or_else(|| quote!(::core::env!("CARGO_PKG_DESCRIPTION")), |s| quote!(#s));
    let topics = desc.topics;
    let schema_versions = desc.schema_versions;
    // The type check sits outside the wasm32 cfg so that a wrong signature is
    // an error in native builds (and unit tests) too, pointing at the function.
    let check = quote_spanned! {ident.span()=>
        const _: ::weir_sdk::__private::HandlerFn = #ident;
    };
    Ok(quote! {
        #func
        #check

        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        mod __weir_handler_exports {
            #[unsafe(no_mangle)]
            extern "C" fn weir_abi_version() -> i32 {
                ::weir_sdk::__private::abi_version()
            }

            #[unsafe(no_mangle)]
            extern "C" fn weir_alloc(len: i32) -> i32 {
                ::weir_sdk::__private::alloc_bytes(len)
            }

            #[unsafe(no_mangle)]
            unsafe extern "C" fn weir_dealloc(ptr: i32, len: i32) {
                // SAFETY: the host frees only buffers it was given, once (docs/abi.md).
                unsafe { ::weir_sdk::__private::dealloc_bytes(ptr, len) }
            }

            #[unsafe(no_mangle)]
            unsafe extern "C" fn weir_handle(ptr: i32, len: i32) -> i64 {
                // SAFETY: the host passes its live input buffer (docs/abi.md).
                unsafe { ::weir_sdk::__private::handle(ptr, len, super::#ident) }
            }

            #[unsafe(no_mangle)]
            extern "C" fn weir_describe() -> i64 {
                ::weir_sdk::__private::describe(&::weir_sdk::PluginDescription {
                    name: ::std::string::String::from(#name),
                    version: ::std::string::String::from(#version),
                    description: ::std::string::String::from(#description),
                    topics: ::std::vec![#(::std::string::String::from(#topics)),*],
                    schema_versions: ::std::vec![#(#schema_versions),*],
                })
            }
        }
    })
}

fn expand_init(args: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    const SIG: &str = "fn(&Config) -> Result<(), String>";
    if !args.is_empty() {
        return Err(syn::Error::new(args.span(), "#[weir_sdk::init] takes no arguments"));
    }
    let func = check_fn(item, "init", 1, SIG)?;
    let ident = &func.sig.ident;
    let check = quote_spanned! {ident.span()=>
        const _: ::weir_sdk::__private::InitFn = #ident;
    };
    Ok(quote! {
        #func
        #check

        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        mod __weir_init_export {
            #[unsafe(no_mangle)]
            unsafe extern "C" fn weir_init(ptr: i32, len: i32) -> i64 {
                // SAFETY: the host passes its live input buffer (docs/abi.md).
                unsafe { ::weir_sdk::__private::init(ptr, len, super::#ident) }
            }
        }
    })
}

fn expand_aggregate(args: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    const SHAPE: &str =
        "impl Aggregate for MyAggregate { type State = …; type Command = …; fn decide(…); fn evolve(…) }";
    let desc = parse_description(args)?;
    if !desc.topics.is_empty() || !desc.schema_versions.is_empty() {
        return Err(syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[weir_sdk::aggregate] takes `name`, `version` and `description` only",
        ));
    }
    let imp: syn::ItemImpl = syn::parse2(item)
        .map_err(|e| syn::Error::new(e.span(), format!("#[weir_sdk::aggregate] must be placed on `{SHAPE}`")))?;
    match &imp.trait_ {
        Some((None, path, _)) if path.segments.last().is_some_and(|s| s.ident == "Aggregate") => {}
        _ => {
            return Err(syn::Error::new(
                imp.self_ty.span(),
                format!("#[weir_sdk::aggregate] must be placed on `{SHAPE}`"),
            ));
        }
    }
    if !imp.generics.params.is_empty() {
        return Err(syn::Error::new(imp.generics.span(), "#[weir_sdk::aggregate] types cannot be generic"));
    }
    let ty = &imp.self_ty;
    let name = desc.name.map_or_else(|| quote!(::core::env!("CARGO_PKG_NAME")), |s| quote!(#s));
    let version = desc.version.map_or_else(|| quote!(::core::env!("CARGO_PKG_VERSION")), |s| quote!(#s));
    let description = desc.description.map_or_else(|| quote!(::core::env!("CARGO_PKG_DESCRIPTION")), |s| quote!(#s));
    Ok(quote! {
        #imp

        #[doc(hidden)]
        type __WeirAggregate = #ty;

        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        mod __weir_aggregate_exports {
            #[unsafe(no_mangle)]
            extern "C" fn weir_abi_version() -> i32 {
                ::weir_sdk::__private::abi_version()
            }

            #[unsafe(no_mangle)]
            extern "C" fn weir_alloc(len: i32) -> i32 {
                ::weir_sdk::__private::alloc_bytes(len)
            }

            #[unsafe(no_mangle)]
            unsafe extern "C" fn weir_dealloc(ptr: i32, len: i32) {
                // SAFETY: the host frees only buffers it was given, once (docs/abi.md).
                unsafe { ::weir_sdk::__private::dealloc_bytes(ptr, len) }
            }

            #[unsafe(no_mangle)]
            extern "C" fn weir_handle(_ptr: i32, _len: i32) -> i64 {
                ::weir_sdk::__private::aggregate_handle()
            }

            #[unsafe(no_mangle)]
            unsafe extern "C" fn weir_decide(ptr: i32, len: i32) -> i64 {
                // SAFETY: the host passes its live input buffer (docs/abi.md).
                unsafe { ::weir_sdk::__private::decide::<super::__WeirAggregate>(ptr, len) }
            }

            #[unsafe(no_mangle)]
            unsafe extern "C" fn weir_evolve(ptr: i32, len: i32) -> i64 {
                // SAFETY: the host passes its live input buffer (docs/abi.md).
                unsafe { ::weir_sdk::__private::evolve::<super::__WeirAggregate>(ptr, len) }
            }

            #[unsafe(no_mangle)]
            extern "C" fn weir_describe() -> i64 {
                ::weir_sdk::__private::describe(&::weir_sdk::PluginDescription {
                    name: ::std::string::String::from(#name),
                    version: ::std::string::String::from(#version),
                    description: ::std::string::String::from(#description),
                    topics: ::std::vec::Vec::new(),
                    schema_versions: ::std::vec::Vec::new(),
                })
            }
        }
    })
}

fn expand_upcaster(args: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    const SIG: &str = "fn(&Event) -> Result<Vec<Upcast>, String>";
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args)?;
    let (mut topic, mut from, mut to) = (None, None, None);
    let (mut name, mut version, mut description) = (None, None, None);
    for meta in metas {
        let Meta::NameValue(nv) = &meta else {
            return Err(syn::Error::new(
                meta.span(),
                "expected `key = value`, e.g. `topic = \"orders.order.created\"`",
            ));
        };
        let key = nv.path.get_ident().map(ToString::to_string).unwrap_or_default();
        let int = |e: &Expr| match e {
            Expr::Lit(ExprLit { lit: Lit::Int(i), .. }) => i.base10_parse::<u32>(),
            other => Err(syn::Error::new(other.span(), format!("`{key}` takes an integer literal, e.g. `{key} = 1`"))),
        };
        match key.as_str() {
            "topic" => topic = Some(string(&nv.value, "topic")?),
            "from" => from = Some(int(&nv.value)?),
            "to" => to = Some(int(&nv.value)?),
            "name" => name = Some(string(&nv.value, "name")?),
            "version" => version = Some(string(&nv.value, "version")?),
            "description" => description = Some(string(&nv.value, "description")?),
            _ => {
                return Err(syn::Error::new(
                    nv.path.span(),
                    format!(
                        "unknown upcaster argument `{key}`; expected one of `topic`, `from`, `to`, `name`, `version`, `description`"
                    ),
                ));
            }
        }
    }
    let call_site = proc_macro2::Span::call_site();
    let topic = topic.ok_or_else(|| syn::Error::new(call_site, "#[weir_sdk::upcaster] needs `topic = \"…\"`"))?;
    let from = from.ok_or_else(|| syn::Error::new(call_site, "#[weir_sdk::upcaster] needs `from = N`"))?;
    let to = to.ok_or_else(|| syn::Error::new(call_site, "#[weir_sdk::upcaster] needs `to = M`"))?;
    if from == 0 || to <= from {
        return Err(syn::Error::new(call_site, "#[weir_sdk::upcaster] needs 1 <= from < to: upcasters go forward"));
    }
    let func = check_fn(item, "upcaster", 1, SIG)?;
    let ident = &func.sig.ident;
    let name = name.map_or_else(|| quote!(::core::env!("CARGO_PKG_NAME")), |s| quote!(#s));
    let version = version.map_or_else(|| quote!(::core::env!("CARGO_PKG_VERSION")), |s| quote!(#s));
    let description = description.map_or_else(|| quote!(::core::env!("CARGO_PKG_DESCRIPTION")), |s| quote!(#s));
    let check = quote_spanned! {ident.span()=>
        const _: ::weir_sdk::upcast::UpcasterFn = #ident;
    };
    Ok(quote! {
        #func
        #check

        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        mod __weir_upcaster_exports {
            #[unsafe(no_mangle)]
            extern "C" fn weir_abi_version() -> i32 {
                ::weir_sdk::__private::abi_version()
            }

            #[unsafe(no_mangle)]
            extern "C" fn weir_alloc(len: i32) -> i32 {
                ::weir_sdk::__private::alloc_bytes(len)
            }

            #[unsafe(no_mangle)]
            unsafe extern "C" fn weir_dealloc(ptr: i32, len: i32) {
                // SAFETY: the host frees only buffers it was given, once (docs/abi.md).
                unsafe { ::weir_sdk::__private::dealloc_bytes(ptr, len) }
            }

            #[unsafe(no_mangle)]
            extern "C" fn weir_handle(_ptr: i32, _len: i32) -> i64 {
                ::weir_sdk::__private::upcaster_handle()
            }

            #[unsafe(no_mangle)]
            unsafe extern "C" fn weir_upcast(ptr: i32, len: i32) -> i64 {
                // SAFETY: the host passes its live input buffer (docs/abi.md).
                unsafe { ::weir_sdk::__private::upcast(ptr, len, super::#ident, #from, #to) }
            }

            #[unsafe(no_mangle)]
            extern "C" fn weir_describe() -> i64 {
                ::weir_sdk::__private::describe(&::weir_sdk::PluginDescription {
                    name: ::std::string::String::from(#name),
                    version: ::std::string::String::from(#version),
                    description: ::std::string::String::from(#description),
                    topics: ::std::vec![::std::string::String::from(#topic)],
                    schema_versions: ::std::vec![#from, #to],
                })
            }
        }
    })
}
