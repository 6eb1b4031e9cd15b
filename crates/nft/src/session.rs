//! An in-process libnftables session, loaded at run time with dlopen so that ward starts (and
//! can say what to install) on machines without it. Every call is one kernel transaction.

use libloading::{Library, Symbol};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};

const OUTPUT_STATELESS: c_uint = 1 << 2;
const OUTPUT_JSON: c_uint = 1 << 4;
const OUTPUT_TERSE: c_uint = 1 << 11;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(
        "cannot load libnftables ({0}); install it: `apt-get install libnftables1` on Debian/Ubuntu, \
         `dnf install nftables` on Fedora"
    )]
    Missing(String),
    #[error("libnftables: {0}")]
    Init(String),
    /// The kernel or libnftables refused the command; nothing was changed.
    #[error("nftables rejected the change: {0}")]
    Rejected(String),
}

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type SetFlags = unsafe extern "C" fn(*mut c_void, c_uint);
type Buffer = unsafe extern "C" fn(*mut c_void) -> c_int;
type GetBuffer = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

/// Output form of a listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    /// JSON without set elements: the table's shape.
    JsonTerse,
    /// nft's own language.
    Text,
    /// nft's own language without counter values: what compares equal across traffic.
    TextStateless,
}

pub struct Session {
    // Field order matters: `ctx` must be freed before `lib` is unloaded (see Drop).
    ctx: *mut c_void,
    /// Looked up once: the DNS proxy runs a command per answer.
    f: Fns,
    lib: Library,
}

/// The libnftables functions used per command; valid while `Session::lib` stays loaded.
struct Fns {
    set_flags: SetFlags,
    run: RunCmd,
    get_out: GetBuffer,
    get_err: GetBuffer,
    free: CtxFree,
}

impl Session {
    /// Opens a session in the calling thread's network namespace.
    pub fn open() -> Result<Session, NftError> {
        let lib = ["libnftables.so.1", "libnftables.so"]
            .iter()
            // SAFETY: loading libnftables runs only its ELF constructors, which have no preconditions.
            .find_map(|n| unsafe { Library::new(n) }.ok())
            .ok_or_else(|| NftError::Missing("libnftables.so.1 not found".into()))?;
        // SAFETY: these symbols have these signatures in libnftables.h; the copied function
        // pointers are only called while `lib`, moved into the Session with them, is loaded.
        let (f, new) = unsafe {
            let f = Fns {
                set_flags: *sym::<SetFlags>(&lib, b"nft_ctx_output_set_flags\0")?,
                run: *sym::<RunCmd>(&lib, b"nft_run_cmd_from_buffer\0")?,
                get_out: *sym::<GetBuffer>(&lib, b"nft_ctx_get_output_buffer\0")?,
                get_err: *sym::<GetBuffer>(&lib, b"nft_ctx_get_error_buffer\0")?,
                free: *sym::<CtxFree>(&lib, b"nft_ctx_free\0")?,
            };
            (f, *sym::<CtxNew>(&lib, b"nft_ctx_new\0")?)
        };
        // SAFETY: `new` is nft_ctx_new with no preconditions.
        let ctx = unsafe { new(0) };
        if ctx.is_null() {
            return Err(NftError::Init("nft_ctx_new failed".into()));
        }
        let s = Session { ctx, f, lib };
        // SAFETY: `ctx` is a live context; these signatures match libnftables.h.
        unsafe {
            let out: Symbol<Buffer> = sym(&s.lib, b"nft_ctx_buffer_output\0")?;
            let err: Symbol<Buffer> = sym(&s.lib, b"nft_ctx_buffer_error\0")?;
            if out(s.ctx) != 0 || err(s.ctx) != 0 {
                return Err(NftError::Init("cannot buffer libnftables output".into()));
            }
        }
        Ok(s)
    }

    /// Runs a JSON batch; the kernel applies all of it or nothing.
    pub fn apply_json(&self, json: &str) -> Result<(), NftError> {
        self.run(json, OUTPUT_JSON).map(|_| ())
    }

    /// Runs commands written in nft's language, as one transaction.
    pub fn apply_text(&self, text: &str) -> Result<(), NftError> {
        self.run(text, 0).map(|_| ())
    }

    /// `list table inet NAME`; `Ok(None)` when the table does not exist.
    pub fn list_table(&self, table: &str, format: Format) -> Result<Option<String>, NftError> {
        let flags = match format {
            Format::Json => OUTPUT_JSON,
            Format::JsonTerse => OUTPUT_JSON | OUTPUT_TERSE,
            Format::Text => 0,
            Format::TextStateless => OUTPUT_STATELESS,
        };
        match self.run(&format!("list table inet {table}"), flags) {
            Ok(out) => Ok(Some(out)),
            Err(NftError::Rejected(e)) if e.contains("No such file or directory") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Runs a listing command (`list set inet ward NAME`, ...) and returns its JSON output.
    pub fn list_json(&self, cmd: &str) -> Result<String, NftError> {
        self.run(cmd, OUTPUT_JSON)
    }

    fn run(&self, cmd: &str, flags: c_uint) -> Result<String, NftError> {
        let c = CString::new(cmd)
            .map_err(|_| NftError::Rejected("command contains a NUL byte".into()))?;
        // SAFETY: `ctx` is live for `self`'s lifetime; buffers returned by libnftables are
        // valid NUL-terminated strings until the next command on this context, and are copied.
        unsafe {
            let f = &self.f;
            (f.set_flags)(self.ctx, flags);
            let rc = (f.run)(self.ctx, c.as_ptr());
            let out = cstr((f.get_out)(self.ctx));
            let err = cstr((f.get_err)(self.ctx));
            if rc != 0 {
                let msg = if err.trim().is_empty() {
                    format!("exit code {rc}")
                } else {
                    err.trim_end().to_string()
                };
                return Err(NftError::Rejected(msg));
            }
            Ok(out)
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: `ctx` came from nft_ctx_new and is freed once, before `lib` unloads.
        unsafe { (self.f.free)(self.ctx) }
    }
}

unsafe fn sym<'l, T>(lib: &'l Library, name: &[u8]) -> Result<Symbol<'l, T>, NftError> {
    lib.get(name).map_err(|e| NftError::Missing(e.to_string()))
}

unsafe fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}
