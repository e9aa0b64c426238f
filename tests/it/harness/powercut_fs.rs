//! A test-only filesystem that forgets, at a "power cut", every write not made durable.
//!
//! An in-memory FUSE filesystem (fuser) where each file keeps two copies: what programs see, and
//! what would survive a power cut. `fsync`/`fdatasync` copy the file's dirty pages into the
//! durable copy; `fsync` on a directory makes its current entries durable (POSIX semantics: a new
//! or renamed file's name is durable only after its directory is synced). [`PowerCutFs::cut`]
//! unmounts, throws away everything not durable — or keeps each unsynced page with a given
//! probability, like a disk cache that had written part of it — and mounts again.
//! Opened files use direct I/O so the kernel's page cache never hides the filesystem's state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow,
};

const PAGE: usize = 4096;
const ROOT: u64 = fuser::FUSE_ROOT_ID;
const TTL: Duration = Duration::ZERO;

/// What a cut discarded.
#[derive(Debug, Default, Clone, Copy)]
pub struct CutReport {
    /// Unsynced pages thrown away.
    pub pages_lost: usize,
    /// Unsynced pages that happened to reach the "disk".
    pub pages_kept: usize,
    /// Directories whose unsynced entries were reverted.
    pub dirs_reverted: usize,
}

/// Counters since mount, for reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsCounters {
    /// fsync/fdatasync calls on files.
    pub file_syncs: u64,
    /// fsync calls on directories.
    pub dir_syncs: u64,
    /// write calls.
    pub writes: u64,
}

/// A mounted power-cut filesystem.
pub struct PowerCutFs {
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
}

impl PowerCutFs {
    /// Mounts an empty filesystem on `mountpoint` (an existing empty folder). Needs /dev/fuse and
    /// root, or fusermount3 (Debian package fuse3).
    pub fn mount(mountpoint: &Path) -> std::io::Result<PowerCutFs> {
        let state = Arc::new(Mutex::new(State::new()));
        let mut fs = PowerCutFs {
            state,
            mountpoint: mountpoint.to_path_buf(),
            session: None,
        };
        fs.mount_again()?;
        Ok(fs)
    }

    fn mount_again(&mut self) -> std::io::Result<()> {
        let options = [
            MountOption::FSName("votegate-powercut".to_string()),
            MountOption::RW,
            MountOption::Exec,
        ];
        let handle = FsHandle {
            state: self.state.clone(),
        };
        self.session = Some(fuser::spawn_mount2(handle, &self.mountpoint, &options)?);
        Ok(())
    }

    /// Cuts the power: unmounts, drops what was not durable (keeping each unsynced page with
    /// probability `keep_unsynced`), and mounts again. Every process using the filesystem must
    /// have exited and every file must be closed.
    pub fn cut(
        &mut self,
        keep_unsynced: f64,
        rng: &mut fastrand::Rng,
    ) -> std::io::Result<CutReport> {
        if let Some(session) = self.session.take() {
            session.join();
        }
        let report = lock(&self.state).revert(keep_unsynced, rng);
        self.mount_again()?;
        Ok(report)
    }

    /// Fills the disk: writes that would make the files hold more than the bytes they hold now
    /// plus `headroom` fail with ENOSPC, until [`PowerCutFs::free`].
    pub fn fill(&self, headroom: usize) {
        let mut state = lock(&self.state);
        state.capacity = Some(state.used() + headroom);
    }

    /// Fails every write with ENOSPC, overwrites of allocated bytes included, until
    /// [`PowerCutFs::free`]: a full filesystem that allocates on every write (btrfs, f2fs), or a
    /// card that stopped taking writes. (On ext4 an overwrite in place still succeeds, which
    /// [`PowerCutFs::fill`] models.)
    pub fn refuse_writes(&self) {
        lock(&self.state).refuse_writes = true;
    }

    /// Frees the disk again.
    pub fn free(&self) {
        let mut state = lock(&self.state);
        state.capacity = None;
        state.refuse_writes = false;
    }

    /// Counters since the first mount.
    pub fn counters(&self) -> FsCounters {
        lock(&self.state).counters
    }
}

impl PowerCutFs {
    /// Unmounts and stops the FUSE session. A file closed a moment ago may still be held by a
    /// thread that is finishing (sled releases its file only when its I/O threads are done), so
    /// a busy mount is retried for a while; fuser would give up at once and then wait forever for
    /// a session that never ends.
    fn unmount(&mut self) -> std::io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let path = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            // SAFETY: a valid NUL-terminated path.
            if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EBUSY) || std::time::Instant::now() >= deadline {
                self.session = Some(session);
                return Err(std::io::Error::new(
                    err.kind(),
                    format!("cannot unmount {}: {err}", self.mountpoint.display()),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        session.join();
        Ok(())
    }
}

impl Drop for PowerCutFs {
    fn drop(&mut self) {
        if let Err(err) = self.unmount() {
            eprintln!("power-cut filesystem: {err}");
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    counters: FsCounters,
    /// Bytes the files may hold in all; a write beyond fails with ENOSPC (a full disk).
    capacity: Option<usize>,
    /// Every write fails with ENOSPC.
    refuse_writes: bool,
}

struct Node {
    perm: u16,
    content: Content,
}

enum Content {
    File {
        data: Vec<u8>,
        durable: Vec<u8>,
        dirty: BTreeSet<usize>,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
        parent: u64,
    },
}

impl State {
    fn new() -> State {
        let root = Node {
            perm: 0o755,
            content: Content::Dir {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
                parent: ROOT,
            },
        };
        State {
            nodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            counters: FsCounters::default(),
            capacity: None,
            refuse_writes: false,
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let node = self.nodes.get(&ino)?;
        let (kind, size, nlink) = match &node.content {
            Content::File { data, .. } => (FileType::RegularFile, data.len() as u64, 1),
            Content::Dir { .. } => (FileType::Directory, 0, 2),
        };
        let now = SystemTime::now();
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind,
            perm: node.perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    fn entries_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, i32> {
        match self.nodes.get_mut(&dir).map(|n| &mut n.content) {
            Some(Content::Dir { entries, .. }) => Ok(entries),
            Some(Content::File { .. }) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<u64, i32> {
        self.entries_mut(parent)?
            .get(name)
            .copied()
            .ok_or(libc::ENOENT)
    }

    fn add(&mut self, parent: u64, name: &OsStr, perm: u16, content: Content) -> Result<u64, i32> {
        if self.entries_mut(parent)?.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, Node { perm, content });
        self.entries_mut(parent)?.insert(name.to_os_string(), ino);
        Ok(ino)
    }

    fn file_mut(&mut self, ino: u64) -> Result<(&mut Vec<u8>, &mut BTreeSet<usize>), i32> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.content) {
            Some(Content::File { data, dirty, .. }) => Ok((data, dirty)),
            Some(Content::Dir { .. }) => Err(libc::EISDIR),
            None => Err(libc::ENOENT),
        }
    }

    /// Bytes all files hold now.
    fn used(&self) -> usize {
        self.nodes
            .values()
            .map(|node| match &node.content {
                Content::File { data, .. } => data.len(),
                Content::Dir { .. } => 0,
            })
            .sum()
    }

    /// ENOSPC if file `ino` growing to `len` bytes would pass the capacity.
    fn check_space(&self, ino: u64, len: usize) -> Result<(), i32> {
        if self.refuse_writes {
            return Err(libc::ENOSPC);
        }
        let Some(capacity) = self.capacity else {
            return Ok(());
        };
        let current = match self.nodes.get(&ino).map(|n| &n.content) {
            Some(Content::File { data, .. }) => data.len(),
            _ => 0,
        };
        if len > current && self.used() + (len - current) > capacity {
            return Err(libc::ENOSPC);
        }
        Ok(())
    }

    fn resize(&mut self, ino: u64, len: usize) -> Result<(), i32> {
        self.check_space(ino, len)?;
        let (data, dirty) = self.file_mut(ino)?;
        let old = data.len();
        data.resize(len, 0);
        let (low, high) = (old.min(len), old.max(len));
        dirty.extend(low / PAGE..=high / PAGE);
        Ok(())
    }

    fn write(&mut self, ino: u64, offset: usize, bytes: &[u8]) -> Result<(), i32> {
        self.counters.writes += 1;
        self.check_space(ino, offset + bytes.len())?;
        let (data, dirty) = self.file_mut(ino)?;
        let end = offset + bytes.len();
        if end > data.len() {
            data.resize(end, 0);
        }
        data[offset..end].copy_from_slice(bytes);
        if !bytes.is_empty() {
            dirty.extend(offset / PAGE..=(end - 1) / PAGE);
        }
        Ok(())
    }

    fn sync(&mut self, ino: u64) -> Result<(), i32> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.content) {
            Some(Content::File {
                data,
                durable,
                dirty,
            }) => {
                self.counters.file_syncs += 1;
                durable.resize(data.len(), 0);
                for page in std::mem::take(dirty) {
                    copy_page(data, durable, page);
                }
                Ok(())
            }
            Some(Content::Dir {
                entries, durable, ..
            }) => {
                self.counters.dir_syncs += 1;
                *durable = entries.clone();
                Ok(())
            }
            None => Err(libc::ENOENT),
        }
    }

    fn revert(&mut self, keep_unsynced: f64, rng: &mut fastrand::Rng) -> CutReport {
        let mut report = CutReport::default();
        for node in self.nodes.values_mut() {
            match &mut node.content {
                Content::File {
                    data,
                    durable,
                    dirty,
                } => {
                    for page in std::mem::take(dirty) {
                        if rng.f64() < keep_unsynced {
                            let end = ((page + 1) * PAGE).min(data.len());
                            if durable.len() < end {
                                durable.resize(end, 0);
                            }
                            copy_page(data, durable, page);
                            report.pages_kept += 1;
                        } else {
                            report.pages_lost += 1;
                        }
                    }
                    *data = durable.clone();
                }
                Content::Dir {
                    entries, durable, ..
                } => {
                    if entries != durable {
                        report.dirs_reverted += 1;
                        *entries = durable.clone();
                    }
                }
            }
        }
        report
    }
}

/// Copies one page's bytes from `from` into `to`, within both lengths.
fn copy_page(from: &[u8], to: &mut [u8], page: usize) {
    let start = page * PAGE;
    let end = ((page + 1) * PAGE).min(from.len()).min(to.len());
    if start < end {
        to[start..end].copy_from_slice(&from[start..end]);
    }
}

struct FsHandle {
    state: Arc<Mutex<State>>,
}

impl FsHandle {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn entry_reply(&self, result: Result<u64, i32>, reply: ReplyEntry) {
        let state = self.state();
        match result.and_then(|ino| state.attr(ino).ok_or(libc::ENOENT)) {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            Err(errno) => reply.error(errno),
        }
    }
}

impl Filesystem for FsHandle {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let result = self.state().lookup(parent, name);
        self.entry_reply(result, reply);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.state().attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(libc::ENOENT),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        if let Some(size) = size {
            if let Err(errno) = state.resize(ino, size as usize) {
                return reply.error(errno);
            }
        }
        if let (Some(mode), Some(node)) = (mode, state.nodes.get_mut(&ino)) {
            node.perm = (mode & 0o7777) as u16;
        }
        match state.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(libc::ENOENT),
        }
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let content = Content::Dir {
            entries: BTreeMap::new(),
            durable: BTreeMap::new(),
            parent,
        };
        let result = self
            .state()
            .add(parent, name, (mode & 0o7777) as u16, content);
        self.entry_reply(result, reply);
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let content = Content::File {
            data: Vec::new(),
            durable: Vec::new(),
            dirty: BTreeSet::new(),
        };
        let mut state = self.state();
        let result = state.add(parent, name, (mode & 0o7777) as u16, content);
        match result.and_then(|ino| state.attr(ino).ok_or(libc::ENOENT)) {
            Ok(attr) => reply.created(&TTL, &attr, 0, 0, fuser::consts::FOPEN_DIRECT_IO),
            Err(errno) => reply.error(errno),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.state().entries_mut(parent).map(|e| e.remove(name)) {
            Ok(Some(_)) => reply.ok(),
            Ok(None) => reply.error(libc::ENOENT),
            Err(errno) => reply.error(errno),
        }
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        let Ok(ino) = state.lookup(parent, name) else {
            return reply.error(libc::ENOENT);
        };
        match state.entries_mut(ino) {
            Ok(children) if !children.is_empty() => return reply.error(libc::ENOTEMPTY),
            Ok(_) => {}
            Err(errno) => return reply.error(errno),
        }
        match state.entries_mut(parent).map(|e| e.remove(name)) {
            Ok(_) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        if flags != 0 {
            return reply.error(libc::EINVAL);
        }
        let mut state = self.state();
        let ino = match state.entries_mut(parent).map(|e| e.remove(name)) {
            Ok(Some(ino)) => ino,
            Ok(None) => return reply.error(libc::ENOENT),
            Err(errno) => return reply.error(errno),
        };
        match state.entries_mut(newparent) {
            Ok(entries) => {
                entries.insert(newname.to_os_string(), ino);
                if let Some(Node {
                    content: Content::Dir { parent, .. },
                    ..
                }) = state.nodes.get_mut(&ino)
                {
                    *parent = newparent;
                }
                reply.ok()
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        if self.state().nodes.contains_key(&ino) {
            reply.opened(0, fuser::consts::FOPEN_DIRECT_IO);
        } else {
            reply.error(libc::ENOENT);
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let mut state = self.state();
        match state.file_mut(ino) {
            Ok((data, _)) => {
                let start = (offset as usize).min(data.len());
                let end = (start + size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        match self.state().write(ino, offset as usize, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(errno) => reply.error(errno),
        }
    }

    fn flush(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _lock_owner: u64,
        reply: ReplyEmpty,
    ) {
        // close() is not a sync: nothing becomes durable here.
        reply.ok();
    }

    fn fsync(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.state().sync(ino) {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.state().sync(ino) {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.state();
        let Some(Node {
            content: Content::Dir {
                entries, parent, ..
            },
            ..
        }) = state.nodes.get(&ino)
        else {
            return reply.error(libc::ENOTDIR);
        };
        let mut listing = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (*parent, FileType::Directory, OsString::from("..")),
        ];
        for (name, child) in entries {
            let kind = match state.nodes.get(child).map(|n| &n.content) {
                Some(Content::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            listing.push((*child, kind, name.clone()));
        }
        for (index, (child, kind, name)) in listing.into_iter().enumerate().skip(offset as usize) {
            if reply.add(child, (index + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let blocks = 1 << 20; // 4 GiB of 4 KiB blocks, all free: the journal's bound is far lower
        reply.statfs(
            blocks,
            blocks,
            blocks,
            1 << 20,
            1 << 20,
            PAGE as u32,
            255,
            PAGE as u32,
        );
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(libc::EOPNOTSUPP);
        }
        let mut state = self.state();
        let end = (offset + length) as usize;
        let grow = match state.file_mut(ino) {
            Ok((data, _)) => data.len() < end,
            Err(errno) => return reply.error(errno),
        };
        let result = if grow { state.resize(ino, end) } else { Ok(()) };
        match result {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }
}
