//! Ctrl-C for the long-running tools (the lab, the benchmark): the signal only raises a flag,
//! which their loops check, so they stop at the next step and their guards clean up.
use std::sync::atomic::{AtomicBool, Ordering};

/// Raised by SIGINT, SIGTERM or SIGHUP once [`install_signal_handlers`] ran.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT, SIGTERM and SIGHUP into [`INTERRUPTED`] instead of ending the process.
pub fn install_signal_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe); the struct is fully
        // initialised (zeroed, then handler and empty mask set).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
