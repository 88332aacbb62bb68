//! Mounting: clearing what a killed daemon left behind, the FUSE session, the control socket and
//! signals.

use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::Error;
use crate::control::{self, Daemon};
use crate::fs::{Inner, PowercutFs, Shared, lock};

/// What `perch-powercut mount` is given.
#[derive(Clone, Debug)]
pub struct MountOptions {
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    pub control: PathBuf,
    /// Also fsync the backing files when the application fsyncs (off: the backing store is not
    /// what is being tested, and skipping its fsyncs keeps the harness fast).
    pub forward_fsync: bool,
}

/// What is mounted at a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountState {
    Free,
    /// A FUSE mount whose daemon is gone (`ENOTCONN`).
    Stale,
    /// Something live, of this filesystem type.
    Busy(String),
}

/// Undoes the octal escapes of `/proc/self/mountinfo` (`\040` for a space…).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The type of the topmost mount at `path` per `mountinfo`, if any.
fn mounted_type(mountinfo: &str, path: &Path) -> Option<String> {
    let path = path.to_string_lossy();
    let mut found = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() > 4 && unescape(fields[4]) == path {
            found = fields.get(dash + 1).map(|s| s.to_string());
        }
    }
    found
}

pub fn mount_state(path: &Path) -> io::Result<MountState> {
    match std::fs::metadata(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return Ok(MountState::Stale),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(MountState::Free),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let canon = path.canonicalize()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(match mounted_type(&info, &canon) {
        None => MountState::Free,
        // A dead FUSE daemon's mount may still answer stat from cached attributes; statfs always
        // asks the daemon.
        Some(t) if t == "fuse" || t.starts_with("fuse.") => match crate::sys::statfs_errno(canon.as_os_str()) {
            Some(libc::ENOTCONN) => MountState::Stale,
            _ => MountState::Busy(t),
        },
        Some(t) => MountState::Busy(t),
    })
}

/// Lazily unmounts what dead daemons left at `path`; refuses a live mount.
pub fn clear_mountpoint(path: &Path) -> Result<(), Error> {
    for _ in 0..16 {
        match mount_state(path).map_err(Error::io(format!("inspect mountpoint {}", path.display())))? {
            MountState::Free => return Ok(()),
            MountState::Stale => {
                tracing::warn!(path = %path.display(), "a previous daemon died: unmounting its mount lazily");
                crate::sys::unmount(path.as_os_str(), true).map_err(Error::io(format!(
                    "lazy unmount of the stale mount at {}",
                    path.display()
                )))?;
            }
            MountState::Busy(fstype) => {
                return Err(Error::MountpointBusy {
                    path: path.to_owned(),
                    fstype,
                });
            }
        }
    }
    Err(Error::Io {
        context: format!("mountpoint {} stays stale after 16 lazy unmounts", path.display()),
        source: io::Error::from_raw_os_error(libc::EBUSY),
    })
}

/// Removes a socket file no daemon answers on; refuses one that a live daemon holds.
fn clear_socket(path: &Path) -> Result<(), Error> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    if UnixStream::connect(path).is_ok() {
        return Err(Error::ControlInUse(path.to_owned()));
    }
    std::fs::remove_file(path).map_err(Error::io(format!("remove stale control socket {}", path.display())))
}

/// SIGTERM, SIGINT and SIGHUP, blocked in every thread and taken by one that shuts down cleanly.
fn signal_set() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset takes valid signal numbers.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(set.as_mut_ptr(), s);
        }
        set.assume_init()
    }
}

fn wait_for_signal(set: libc::sigset_t, shared: Shared, mountpoint: PathBuf, socket: PathBuf) {
    let mut sig = 0;
    // SAFETY: a valid set; the signals are blocked in every thread.
    unsafe { libc::sigwait(&set, &mut sig) };
    tracing::info!(signal = sig, "shutting down cleanly");
    lock(&shared).shut_down();
    let errors = Daemon {
        shared,
        mountpoint,
        socket,
    }
    .release();
    for e in errors {
        tracing::warn!("{e}");
    }
    std::process::exit(0);
}

/// Mounts and serves until a cut or a shutdown (both end the process) or an external unmount.
/// Prints `mounted <mountpoint>` on stdout once the mount answers.
pub fn run(opts: &MountOptions) -> Result<(), Error> {
    let nofile = crate::sys::raise_nofile_limit();
    tracing::debug!(nofile, "open descriptor limit");
    std::fs::create_dir_all(&opts.backing).map_err(Error::io(format!(
        "create backing directory {}",
        opts.backing.display()
    )))?;
    clear_mountpoint(&opts.mountpoint)?;
    std::fs::create_dir_all(&opts.mountpoint)
        .map_err(Error::io(format!("create mountpoint {}", opts.mountpoint.display())))?;
    let mountpoint = opts
        .mountpoint
        .canonicalize()
        .map_err(Error::io(format!("resolve mountpoint {}", opts.mountpoint.display())))?;
    clear_socket(&opts.control)?;

    let inner = Inner::new(&opts.backing, opts.forward_fsync).map_err(Error::io(format!(
        "prepare backing directory {}",
        opts.backing.display()
    )))?;
    let fs = PowercutFs::new(inner);
    let shared = fs.shared();

    // Block the shutdown signals before any thread starts, so that all inherit the mask.
    let set = signal_set();
    // SAFETY: a valid set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    let listener = UnixListener::bind(&opts.control)
        .map_err(Error::io(format!("bind control socket {}", opts.control.display())))?;

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("perch-powercut".into()),
        fuser::MountOption::Subtype("perch-powercut".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    config.acl = fuser::SessionACL::All;
    let session = fuser::Session::new(fs, &mountpoint, &config)
        .map_err(Error::io(format!("mount FUSE at {}", mountpoint.display())))?;

    {
        let (shared, mountpoint, socket) = (shared.clone(), mountpoint.clone(), opts.control.clone());
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || wait_for_signal(set, shared, mountpoint, socket))
            .map_err(Error::io("spawn the signal thread"))?;
    }
    {
        let daemon = Daemon {
            shared: shared.clone(),
            mountpoint: mountpoint.clone(),
            socket: opts.control.clone(),
        };
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || control::serve(listener, daemon))
            .map_err(Error::io("spawn the control thread"))?;
    }

    tracing::info!(
        mountpoint = %mountpoint.display(),
        backing = %opts.backing.display(),
        control = %opts.control.display(),
        "mounted"
    );
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "mounted {}", mountpoint.display());
    let _ = out.flush();
    drop(out);

    let result = session.run();
    // The session ends when the mount goes away. After a cut or shutdown the thread that did it
    // answers and exits the process; otherwise someone unmounted us: a clean shutdown.
    let cut = lock(&shared).is_dead();
    if cut {
        loop {
            std::thread::park();
        }
    }
    lock(&shared).shut_down();
    let _ = std::fs::remove_file(&opts.control);
    tracing::info!("unmounted from outside: shut down cleanly");
    result.map_err(Error::io("FUSE session"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lookup() {
        let info = "22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n\
                    40 22 0:50 / /tmp/a\\040b rw - fuse.perch-powercut perch-powercut rw,user_id=0\n";
        assert_eq!(
            mounted_type(info, Path::new("/tmp/a b")).as_deref(),
            Some("fuse.perch-powercut")
        );
        assert_eq!(mounted_type(info, Path::new("/proc")).as_deref(), Some("proc"));
        assert_eq!(mounted_type(info, Path::new("/tmp")), None);
    }
}
