//! The console: one short `powerunit: ...` line per boot stage, written to the serial
//! console (fd 2 once [`attach`] ran). Writes never fail loudly: PID 1 must not die because
//! the console is gone.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

/// Print one line prefixed with `powerunit: ` on the console.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::console::line(format_args!($($arg)*))
    };
}

#[doc(hidden)]
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "powerunit: {args}");
    let _ = err.flush();
}

/// Make `/dev/console` our stdin, stdout and stderr (the kernel did so already when the
/// initramfs carries a `/dev/console` node; this covers the case where it does not).
pub fn attach() {
    if let Ok(console) = open() {
        let _ = nix::unistd::dup2_stdin(&console);
        let _ = nix::unistd::dup2_stdout(&console);
        let _ = nix::unistd::dup2_stderr(&console);
    }
}

/// Open the console for writing, never as a controlling terminal.
pub fn open() -> std::io::Result<std::fs::File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open("/dev/console")
}
