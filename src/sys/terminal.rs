//! The size of the terminal a program writes to, as the kernel keeps it (`TIOCGWINSZ`).
//! Whether to use it, and what to do without one, is the caller's business.

/// A terminal's size in character cells; a side the kernel does not know is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub columns: usize,
    pub rows: usize,
}

/// The size of the terminal on stdout, when stdout is a terminal.
pub fn stdout_size() -> Option<Size> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which points at a live,
    // initialised `winsize`; fd 1 is only queried, and a closed or non-terminal fd 1 makes
    // the call fail without touching memory.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0).then_some(Size {
        columns: ws.ws_col.into(),
        rows: ws.ws_row.into(),
    })
}
