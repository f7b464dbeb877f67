//! The descriptor limit (`RLIMIT_NOFILE`), portable through nix's safe wrappers.

use std::io;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The soft `RLIMIT_NOFILE` of this process: the first descriptor number it may not open.
/// `None` when unlimited (`RLIM_INFINITY`) or beyond `usize`.
///
/// # Errors
///
/// `getrlimit` failed.
pub fn fd_limit() -> io::Result<Option<usize>> {
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft == nix::sys::resource::RLIM_INFINITY {
        return Ok(None);
    }
    Ok(usize::try_from(soft).ok())
}

/// Sets the soft `RLIMIT_NOFILE` of this process to `soft` (at most the hard limit, which
/// is left as it is).
///
/// # Errors
///
/// `soft` is above the hard limit, or `setrlimit` failed.
pub fn set_fd_limit(soft: usize) -> io::Result<()> {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    // `rlim_t` is unsigned on Linux and macOS, signed on the BSDs.
    let soft = nix::libc::rlim_t::try_from(soft).unwrap_or(nix::sys::resource::RLIM_INFINITY);
    if soft > hard {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("RLIMIT_NOFILE {soft} is above the hard limit {hard}"),
        ));
    }
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard)?;
    Ok(())
}

/// "N of L descriptors open" for log lines about a full descriptor table (counts them: not
/// for hot paths).
pub(crate) fn fd_limit_summary() -> String {
    let open = super::open_fd_count().map_or_else(|_| "?".to_string(), |n| n.to_string());
    match fd_limit() {
        Ok(Some(l)) => format!("{open} of RLIMIT_NOFILE {l} descriptors open"),
        Ok(None) => format!("{open} descriptors open, RLIMIT_NOFILE unlimited"),
        Err(_) => format!("{open} descriptors open"),
    }
}

/// Whether an `accept` error means the descriptor table is full (`EMFILE`: this process's
/// `RLIMIT_NOFILE`; `ENFILE`: the system's file limit), so that accepting again at once
/// would fail the same way.
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE) | Some(nix::libc::ENFILE)
    )
}
