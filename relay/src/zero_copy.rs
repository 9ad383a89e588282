//! One direction of a relay: small messages copied through a buffer, bulk moved socket → pipe →
//! socket with `splice(2)` (zero-copy), driven by tokio's readiness so it never blocks a worker
//! thread.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The most a pipe holds per direction (the kernel caps it at `fs.pipe-max-size`).
const PIPE_SIZE: i32 = 1 << 20;
/// How many pipes of one process get [`PIPE_SIZE`]; the others keep the kernel's 64 KiB.
///
/// The kernel counts pipe memory per user (`fs.pipe-user-pages-soft`, 64 MiB by default) and
/// every container of ours runs as root, the same user: past that budget each new pipe gets
/// 8 KiB and resizing fails, so 100 relayed streams with 1 MiB pipes each left the later ones
/// crawling (measured: 100 intercepted streams at 15 % of direct, 44 % with the limit lifted).
/// Eight big pipes per process (3 roles: 24 MiB) leave the budget to the rest.
const BIG_PIPES: usize = 8;

static BIG: Budget = Budget::new(BIG_PIPES);

/// A count of big pipes held, capped.
struct Budget {
    held: std::sync::atomic::AtomicUsize,
    cap: usize,
}

impl Budget {
    const fn new(cap: usize) -> Budget {
        Budget {
            held: std::sync::atomic::AtomicUsize::new(0),
            cap,
        }
    }

    /// Takes one if any is left.
    fn take(&self) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        self.held
            .fetch_update(AcqRel, Acquire, |n| (n < self.cap).then_some(n + 1))
            .is_ok()
    }

    fn give_back(&self) {
        self.held.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A non-blocking pipe carrying one direction of a relay.
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// Holds one of [`BIG`]'s pipes.
    big: bool,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        if self.big {
            BIG.give_back();
        }
    }
}

impl Pipe {
    // SAFETY: see the comments on each libc call below; every fd touched is one this
    // function creates and then owns.
    #[allow(unsafe_code)]
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created and are owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A bigger pipe means fewer splice calls, while the budget lasts; failure (a lower
        // limit) is harmless.
        let mut big = BIG.take();
        // SAFETY: plain fcntl on an fd we own.
        if big && unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) } < 0 {
            BIG.give_back();
            big = false;
        }
        Ok(Pipe { r, w, big })
    }
}

// SAFETY: `splice(2)` only reads and writes the fds it is given, which the caller holds open.
#[allow(unsafe_code)]
fn splice(from: i32, to: i32, len: usize) -> io::Result<usize> {
    // SAFETY: splice between two fds we hold; null offsets (both are streams).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Messages smaller than this are copied through a buffer of this size: for a request or an
/// answer of a few KiB, a read and a write cost less than two splices, and a read that does not
/// fill the buffer has drained the socket, so the readiness is cleared without the read that
/// would only have said `EAGAIN`. A read that fills it starts splicing; a splice that moves less
/// than this goes back to copying.
const COPY_BUF: usize = 16 * 1024;

/// Moves bytes from `from` to `to` until EOF, then shuts `to`'s write half down. The pipe is
/// made at the first read that fills the buffer, so a connection of small messages never holds
/// one (nor one of the big pipes' budget); where the kernel refuses one, it keeps copying.
pub async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_BUF];
    let mut pipe: Option<Pipe> = None;
    let mut splicing = false;
    let mut total = 0u64;
    loop {
        from.readable().await?;
        let moved = match &pipe {
            Some(p) if splicing => splice_once(from, to, p).await,
            _ => copy_once(from, to, &mut buf).await,
        };
        let n = match moved {
            Ok(0) => {
                // EOF: pass the half-close on.
                let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
                return Ok(total);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        total += n as u64;
        splicing = n >= COPY_BUF;
        if splicing && pipe.is_none() {
            pipe = Pipe::new().ok();
        }
    }
}

/// Copies what `from` has (up to [`COPY_BUF`]) to `to`: how much (0 at EOF).
async fn copy_once(from: &TcpStream, to: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let n = from.try_read(buf)?;
    if n > 0 && n < buf.len() {
        // Drained (a later arrival is a new readiness event, which this does not clear).
        let _ = from.try_io(Interest::READABLE, || {
            Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
        });
    }
    let mut rest = &buf[..n];
    while !rest.is_empty() {
        to.writable().await?;
        match to.try_write(rest) {
            Ok(k) => rest = &rest[k..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Splices what `from` has (up to the pipe's size) through `pipe` to `to`: how much (0 at EOF).
async fn splice_once(from: &TcpStream, to: &TcpStream, pipe: &Pipe) -> io::Result<usize> {
    let (src, dst) = (from.as_raw_fd(), to.as_raw_fd());
    let n = from.try_io(Interest::READABLE, || {
        splice(src, pipe.w.as_raw_fd(), PIPE_SIZE as usize)
    })?;
    let mut in_pipe = n;
    while in_pipe > 0 {
        to.writable().await?;
        match to.try_io(Interest::WRITABLE, || {
            splice(pipe.r.as_raw_fd(), dst, in_pipe)
        }) {
            Ok(k) => in_pipe -= k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_caps_and_refills() {
        let b = Budget::new(2);
        assert!(b.take() && b.take());
        assert!(!b.take(), "a third over a cap of two");
        b.give_back();
        assert!(b.take());
        assert!(!b.take());
    }
}
