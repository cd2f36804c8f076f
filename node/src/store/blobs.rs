//! The content-addressed blob store: sources, outputs, logs and images, each a file named
//! by its blake3 hash.
//!
//! ```text
//! <dir>/ab/ab12…ef          a finished blob, fanned out by the first two hex digits
//! <dir>/tmp/<random>.tmp    an anonymous write in progress (deleted on drop)
//! <dir>/tmp/<hex>.partial   a resumable download of a known hash (kept on drop)
//! <dir>/groups/<hex>        the 1 MiB group values of a blob over 1 MiB, made when it
//!                           is first served (see `barn_protocol::groups`)
//! ```
//!
//! Nothing enters the store unverified: a [`BlobWriter`] hashes while it writes and only
//! renames its temp file into place when the hash is the one expected. The temp files live
//! inside the store directory so the rename is atomic (same file system).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use barn_protocol::ContentHash;
use barn_protocol::groups::{self, Groups};

/// Why a blob operation failed. Every variant names the hash or the path involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    #[error("failed to {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("blob {0} is not in the store")]
    NotFound(ContentHash),
    #[error("blob content hashes to {actual}, expected {expected}")]
    Mismatch {
        expected: ContentHash,
        actual: ContentHash,
    },
    #[error("blob {0} is already being written by another download")]
    Busy(ContentHash),
}

impl BlobError {
    fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Io { op, path, source }
    }
}

/// One blob in the store, as [`BlobStore::list`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobEntry {
    pub hash: ContentHash,
    pub size: u64,
    /// Last written, served or used by a job.
    pub used: std::time::SystemTime,
}

/// What a [`BlobStore::collect`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    /// Blobs removed and their bytes.
    pub removed: u64,
    pub freed: u64,
    /// Bytes left in the store.
    pub total: u64,
}

/// A directory of blobs. Cheap to clone; clones share the set of downloads in progress.
#[derive(Clone, Debug)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    tmp: PathBuf,
    groups: PathBuf,
    /// Hashes with a resumable writer open, so two downloads never append to one file.
    writing: Mutex<HashSet<ContentHash>>,
    /// Where blobs entering and leaving are reported ([`BlobStore::subscribe`]).
    changes: Mutex<Option<tokio::sync::mpsc::Sender<BlobChange>>>,
    /// A change could not be reported (the subscriber was behind): it should list again.
    missed: std::sync::atomic::AtomicBool,
}

/// A blob entered or left the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobChange {
    Added(ContentHash),
    Removed(ContentHash),
}

/// Changes a subscriber may fall behind by before they are dropped (and
/// [`BlobStore::take_missed`] says so).
const CHANGES_QUEUED: usize = 1024;

impl BlobStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let dir = dir.into();
        let tmp = dir.join("tmp");
        let groups = dir.join("groups");
        for d in [&tmp, &groups] {
            fs::create_dir_all(d).map_err(BlobError::io("create blob directory", d))?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                dir,
                tmp,
                groups,
                writing: Mutex::new(HashSet::new()),
                changes: Mutex::new(None),
                missed: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// Reports every blob that enters or leaves the store from now on (replacing an earlier
    /// subscriber). Changes are dropped while the subscriber is 1024 behind;
    /// [`take_missed`](Self::take_missed) then says so, and the subscriber should
    /// [`list`](Self::list) again.
    pub fn subscribe(&self) -> tokio::sync::mpsc::Receiver<BlobChange> {
        let (tx, rx) = tokio::sync::mpsc::channel(CHANGES_QUEUED);
        *self
            .inner
            .changes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(tx);
        rx
    }

    /// Whether a change was dropped since the last call.
    pub fn take_missed(&self) -> bool {
        self.inner
            .missed
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    fn report(&self, change: BlobChange) {
        let changes = self
            .inner
            .changes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(tx) = changes.as_ref()
            && tx.try_send(change).is_err()
        {
            self.inner
                .missed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Where the blob `hash` lives (whether or not it is there).
    pub fn path(&self, hash: &ContentHash) -> PathBuf {
        let hex = hash.to_hex();
        self.inner.dir.join(&hex[..2]).join(hex)
    }

    /// Where a resumable download of `hash` keeps its bytes so far.
    pub fn partial_path(&self, hash: &ContentHash) -> PathBuf {
        self.inner.tmp.join(format!("{}.partial", hash.to_hex()))
    }

    /// Whether the blob is in the store.
    pub fn has(&self, hash: &ContentHash) -> bool {
        self.path(hash).is_file()
    }

    /// The blob's size in bytes.
    pub fn size(&self, hash: &ContentHash) -> Result<u64, BlobError> {
        let path = self.path(hash);
        match fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BlobError::NotFound(*hash)),
            Err(e) => Err(BlobError::io("read metadata of", &path)(e)),
        }
    }

    /// Opens the blob for reading.
    pub fn open_read(&self, hash: &ContentHash) -> Result<File, BlobError> {
        let path = self.path(hash);
        match File::open(&path) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BlobError::NotFound(*hash)),
            Err(e) => Err(BlobError::io("open blob", &path)(e)),
        }
    }

    /// Copies the file at `path` into the store, hashing as it goes.
    pub fn import_file(&self, path: &Path) -> Result<ContentHash, BlobError> {
        let mut src = File::open(path).map_err(BlobError::io("open", path))?;
        let mut writer = BlobWriter::new(self)?;
        copy(&mut src, &mut writer, path)?;
        writer.finish(None)
    }

    /// Stores `bytes`.
    pub fn import_bytes(&self, bytes: &[u8]) -> Result<ContentHash, BlobError> {
        let mut writer = BlobWriter::new(self)?;
        writer.write_chunk(bytes)?;
        writer.finish(None)
    }

    /// Removes a blob and its group values (absent is fine).
    pub fn remove(&self, hash: &ContentHash) -> Result<(), BlobError> {
        let _ = fs::remove_file(self.groups_path(hash));
        let path = self.path(hash);
        match fs::remove_file(&path) {
            Ok(()) => {
                self.report(BlobChange::Removed(*hash));
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BlobError::io("remove blob", &path)(e)),
        }
    }

    fn groups_path(&self, hash: &ContentHash) -> PathBuf {
        self.inner.groups.join(hash.to_hex())
    }

    /// The 1 MiB group values of a blob, for verified streaming: read from the cache
    /// beside the store, or computed (one pass over the blob, blocking) and cached. A
    /// cache file that does not merge to the blob's hash is computed again.
    pub fn groups(&self, hash: &ContentHash) -> Result<Groups, BlobError> {
        let size = self.size(hash)?;
        let cached = self.groups_path(hash);
        if groups::count(size) > 1
            && let Ok(bytes) = fs::read(&cached)
            && let Ok(groups) = Groups::decode(&bytes, size, hash)
        {
            return Ok(groups);
        }
        let path = self.path(hash);
        let file = self.open_read(hash)?;
        let groups = Groups::of_reader(io::BufReader::new(file))
            .map_err(BlobError::io("read blob", &path))?;
        if groups.root() != *hash {
            return Err(BlobError::Mismatch {
                expected: *hash,
                actual: groups.root(),
            });
        }
        if groups.len() > 1 {
            // Written whole or not at all; a failure only costs the next serve a pass.
            let temp = self.inner.tmp.join(format!("{}.groups.tmp", hash.to_hex()));
            if fs::write(&temp, groups.encode()).is_ok() {
                let _ = fs::rename(&temp, &cached);
            }
        }
        Ok(groups)
    }

    /// Marks the blob as used now (its modification time), for least-recently-used
    /// collection. A missing blob is fine: there is nothing to keep.
    pub fn touch(&self, hash: &ContentHash) {
        let path = self.path(hash);
        if let Ok(f) = OpenOptions::new().write(true).open(&path) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// Every finished blob: its hash, size and last use, least recently used first.
    /// Files that are not blobs (no 64-hex name in a fan-out folder) are skipped.
    pub fn list(&self) -> Result<Vec<BlobEntry>, BlobError> {
        let dir = &self.inner.dir;
        let mut entries = Vec::new();
        for fan in fs::read_dir(dir).map_err(BlobError::io("list blobs in", dir))? {
            let fan = fan.map_err(BlobError::io("list blobs in", dir))?;
            let name = fan.file_name();
            if name.len() != 2 || !fan.path().is_dir() {
                continue;
            }
            let fan_dir = fan.path();
            for f in fs::read_dir(&fan_dir).map_err(BlobError::io("list blobs in", &fan_dir))? {
                let f = f.map_err(BlobError::io("list blobs in", &fan_dir))?;
                let Some(hash) = f.file_name().to_str().and_then(|n| {
                    format!("{}{n}", ContentHash::PREFIX)
                        .parse::<ContentHash>()
                        .ok()
                }) else {
                    continue;
                };
                let Ok(meta) = f.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                entries.push(BlobEntry {
                    hash,
                    size: meta.len(),
                    used: meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                });
            }
        }
        entries.sort_by(|a, b| a.used.cmp(&b.used).then(a.hash.cmp(&b.hash)));
        Ok(entries)
    }

    /// Removes blobs, least recently used first, until the store holds at most `cap`
    /// bytes; a blob for which `keep` answers true (one an open job needs) stays, even
    /// over the cap.
    pub fn collect(
        &self,
        cap: u64,
        keep: impl Fn(&BlobEntry) -> bool,
    ) -> Result<Collected, BlobError> {
        let entries = self.list()?;
        let mut total: u64 = entries.iter().map(|e| e.size).sum();
        let mut done = Collected::default();
        for e in entries {
            if total <= cap {
                break;
            }
            if keep(&e) {
                continue;
            }
            // Used since the listing (a submission, a peer's fetch)? Ask again.
            let now_used = fs::metadata(self.path(&e.hash)).and_then(|m| m.modified());
            if let Ok(used) = now_used
                && used != e.used
                && keep(&BlobEntry { used, ..e.clone() })
            {
                continue;
            }
            self.remove(&e.hash)?;
            total -= e.size;
            done.removed += 1;
            done.freed += e.size;
        }
        done.total = total;
        Ok(done)
    }

    fn claim(&self, hash: ContentHash) -> Result<(), BlobError> {
        let mut set = self
            .inner
            .writing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if set.insert(hash) {
            Ok(())
        } else {
            Err(BlobError::Busy(hash))
        }
    }

    fn release(&self, hash: &ContentHash) {
        self.inner
            .writing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(hash);
    }
}

fn copy(src: &mut impl Read, writer: &mut BlobWriter, path: &Path) -> Result<(), BlobError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BlobError::io("read", path)(e)),
        };
        writer.write_chunk(&buf[..n])?;
    }
}

/// Writes one blob into the store: a temp file, hashed while written, renamed into place
/// by [`finish`](Self::finish) only if its hash is the one expected.
///
/// An anonymous writer ([`new`](Self::new)) deletes its temp file when dropped unfinished. A
/// resumable writer ([`resume`](Self::resume)) keeps the bytes received so far when dropped,
/// so that a later download of the same hash continues from [`offset`](Self::offset); it
/// deletes them when the finished content does not match.
#[derive(Debug)]
pub struct BlobWriter {
    store: BlobStore,
    file: Option<BufWriter<File>>,
    temp: PathBuf,
    hasher: blake3::Hasher,
    len: u64,
    /// The hash a resumable writer was opened for.
    resumes: Option<ContentHash>,
}

impl BlobWriter {
    /// A writer for content whose hash is not known in advance.
    pub fn new(store: &BlobStore) -> Result<Self, BlobError> {
        let name = format!("{}.tmp", hex_of(&barn_protocol::message::random_bytes()),);
        let temp = store.inner.tmp.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(BlobError::io("create temp file", &temp))?;
        Ok(Self {
            store: store.clone(),
            file: Some(BufWriter::with_capacity(256 * 1024, file)),
            temp,
            hasher: blake3::Hasher::new(),
            len: 0,
            resumes: None,
        })
    }

    /// A writer for the blob `hash`, continuing the partial file an earlier, interrupted
    /// download left: its whole 1 MiB groups are kept and re-hashed, a last incomplete
    /// group (never checked against its value) is cut off. Fails with
    /// [`BlobError::Busy`] while another writer for the same hash is open.
    pub fn resume(store: &BlobStore, hash: ContentHash) -> Result<Self, BlobError> {
        store.claim(hash)?;
        match Self::open_partial(store, hash) {
            Ok(writer) => Ok(writer),
            Err(e) => {
                store.release(&hash);
                Err(e)
            }
        }
    }

    fn open_partial(store: &BlobStore, hash: ContentHash) -> Result<Self, BlobError> {
        let temp = store.partial_path(&hash);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&temp)
            .map_err(BlobError::io("open partial file", &temp))?;
        let had = file
            .metadata()
            .map_err(BlobError::io("read partial file", &temp))?
            .len();
        file.set_len(had / groups::GROUP * groups::GROUP)
            .map_err(BlobError::io("cut partial file", &temp))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut len = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(BlobError::io("read partial file", &temp)(e)),
            };
            hasher.update(&buf[..n]);
            len += n as u64;
        }
        Ok(Self {
            store: store.clone(),
            file: Some(BufWriter::with_capacity(256 * 1024, file)),
            temp,
            hasher,
            len,
            resumes: Some(hash),
        })
    }

    /// Bytes written so far, including those a resumed download already had.
    pub fn offset(&self) -> u64 {
        self.len
    }

    /// Appends `bytes`.
    pub fn write_chunk(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        let Some(file) = self.file.as_mut() else {
            return Err(BlobError::io("write to finished", &self.temp)(
                io::ErrorKind::BrokenPipe.into(),
            ));
        };
        file.write_all(bytes)
            .map_err(BlobError::io("write temp file", &self.temp))?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Verifies the content against `expected` (or, for a resumable writer, the hash it was
    /// opened for), then moves it into the store. On a mismatch the temp file is deleted and
    /// nothing enters the store.
    pub fn finish(mut self, expected: Option<ContentHash>) -> Result<ContentHash, BlobError> {
        let actual = ContentHash::from(self.hasher.finalize());
        let file = self.file.take();
        for wanted in [expected, self.resumes].into_iter().flatten() {
            if wanted != actual {
                drop(file);
                self.delete_temp();
                return Err(BlobError::Mismatch {
                    expected: wanted,
                    actual,
                });
            }
        }
        if let Some(file) = file {
            let file = file
                .into_inner()
                .map_err(|e| BlobError::io("flush temp file", &self.temp)(e.into_error()))?;
            file.sync_all()
                .map_err(BlobError::io("sync temp file", &self.temp))?;
        }
        let dest = self.store.path(&actual);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(BlobError::io("create blob directory", parent))?;
        }
        if let Err(e) = fs::rename(&self.temp, &dest) {
            self.delete_temp();
            return Err(BlobError::io("move blob into place at", &dest)(e));
        }
        self.release_claim();
        self.store.report(BlobChange::Added(actual));
        Ok(actual)
    }

    /// Gives up: deletes the temp file, also for a resumable writer.
    pub fn discard(mut self) {
        self.file = None;
        self.delete_temp();
    }

    fn delete_temp(&mut self) {
        if let Err(e) = fs::remove_file(&self.temp)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.temp.display(), "failed to delete temp blob: {e}");
        }
        self.release_claim();
    }

    fn release_claim(&mut self) {
        if let Some(hash) = self.resumes.take() {
            self.store.release(&hash);
        }
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_chunk(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        match self.file.take() {
            // Unfinished: a resumable download keeps what it has (if anything), an
            // anonymous write goes.
            Some(mut file) if self.resumes.is_some() && self.len > 0 => {
                if let Err(e) = file.flush() {
                    tracing::warn!(path = %self.temp.display(), "failed to flush partial blob: {e}");
                }
                self.release_claim();
            }
            Some(file) => {
                drop(file);
                self.delete_temp();
            }
            // Finished or discarded: nothing left to clean.
            None => self.release_claim(),
        }
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, BlobStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        (dir, store)
    }

    fn temp_files(store: &BlobStore) -> Vec<PathBuf> {
        fs::read_dir(store.dir().join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    #[test]
    fn import_and_read_back() {
        let (_dir, store) = store();
        let data = vec![42u8; 300_000];
        let hash = store.import_bytes(&data).unwrap();
        assert_eq!(hash, ContentHash::of(&data));
        assert!(store.has(&hash));
        assert_eq!(store.size(&hash).unwrap(), 300_000);
        let path = store.path(&hash);
        assert_eq!(
            path.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap(),
            &hash.to_hex()[..2]
        );
        let mut back = Vec::new();
        store
            .open_read(&hash)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        assert!(temp_files(&store).is_empty());
    }

    #[test]
    fn import_file_and_empty_blob() {
        let (dir, store) = store();
        let src = dir.path().join("src.bin");
        fs::write(&src, b"some source bytes").unwrap();
        let hash = store.import_file(&src).unwrap();
        assert_eq!(hash, ContentHash::of(b"some source bytes"));
        let empty = store.import_bytes(b"").unwrap();
        assert_eq!(store.size(&empty).unwrap(), 0);
    }

    #[test]
    fn missing_blob_is_named() {
        let (_dir, store) = store();
        let hash = ContentHash::of(b"nope");
        assert!(!store.has(&hash));
        assert!(matches!(store.size(&hash), Err(BlobError::NotFound(h)) if h == hash));
        let err = store.open_read(&hash).unwrap_err();
        assert!(err.to_string().contains(&hash.to_string()));
    }

    #[test]
    fn mismatch_leaves_nothing() {
        let (_dir, store) = store();
        let mut w = BlobWriter::new(&store).unwrap();
        w.write_chunk(b"actual").unwrap();
        let expected = ContentHash::of(b"expected");
        let err = w.finish(Some(expected)).unwrap_err();
        assert!(matches!(err, BlobError::Mismatch { expected: e, .. } if e == expected));
        assert!(!store.has(&ContentHash::of(b"actual")));
        assert!(temp_files(&store).is_empty());
    }

    #[test]
    fn dropped_anonymous_writer_deletes_its_temp() {
        let (_dir, store) = store();
        let mut w = BlobWriter::new(&store).unwrap();
        w.write_chunk(b"half").unwrap();
        drop(w);
        assert!(temp_files(&store).is_empty());
    }

    #[test]
    fn resume_continues_a_partial_download_from_its_last_whole_group() {
        let (_dir, store) = store();
        let group = groups::GROUP as usize;
        let data: Vec<u8> = (0..5 * group / 2).map(|i| (i % 251) as u8).collect();
        let hash = ContentHash::of(&data);
        let cut = group + group / 2;

        let mut w = BlobWriter::resume(&store, hash).unwrap();
        assert_eq!(w.offset(), 0);
        w.write_chunk(&data[..cut]).unwrap();
        // A second download of the same hash must wait.
        assert!(matches!(
            BlobWriter::resume(&store, hash),
            Err(BlobError::Busy(_))
        ));
        drop(w); // the connection broke
        assert_eq!(
            fs::metadata(store.partial_path(&hash)).unwrap().len(),
            cut as u64
        );

        // Half a group was never checked: the download goes on from the whole one.
        let mut w = BlobWriter::resume(&store, hash).unwrap();
        assert_eq!(w.offset(), group as u64);
        w.write_chunk(&data[group..]).unwrap();
        assert_eq!(w.finish(None).unwrap(), hash);
        assert!(store.has(&hash));
        assert!(temp_files(&store).is_empty());
        // The claim was released.
        BlobWriter::resume(&store, hash).unwrap().discard();
    }

    #[test]
    fn blobs_entering_and_leaving_are_reported_and_a_full_queue_says_so() {
        let (_dir, store) = store();
        let mut changes = store.subscribe();
        let hash = store.import_bytes(b"reported").unwrap();
        store.remove(&hash).unwrap();
        store.remove(&hash).unwrap(); // absent: nothing left, nothing reported
        assert_eq!(changes.try_recv().unwrap(), BlobChange::Added(hash));
        assert_eq!(changes.try_recv().unwrap(), BlobChange::Removed(hash));
        assert!(changes.try_recv().is_err());
        assert!(!store.take_missed());
        for i in 0..=CHANGES_QUEUED as u32 {
            store.import_bytes(&i.to_le_bytes()).unwrap();
        }
        assert!(
            store.take_missed(),
            "the change over the queue is said to be missed"
        );
        assert!(!store.take_missed());
    }

    #[test]
    fn group_values_are_cached_checked_and_removed_with_the_blob() {
        let (_dir, store) = store();
        let data: Vec<u8> = (0..3 * groups::GROUP + 5)
            .map(|i| (i % 253) as u8)
            .collect();
        let hash = store.import_bytes(&data).unwrap();
        let computed = store.groups(&hash).unwrap();
        assert_eq!(computed.root(), hash);
        let cached = store.groups_path(&hash);
        assert_eq!(fs::read(&cached).unwrap(), computed.encode());
        // A damaged cache is not believed.
        fs::write(&cached, vec![0u8; computed.encode().len()]).unwrap();
        assert_eq!(store.groups(&hash).unwrap(), computed);
        assert_eq!(fs::read(&cached).unwrap(), computed.encode());
        // Listing skips the cache; removing the blob removes it.
        assert_eq!(store.list().unwrap().len(), 1);
        store.remove(&hash).unwrap();
        assert!(!cached.exists());
        // One group: its value is the hash, nothing cached.
        let small = store.import_bytes(b"small").unwrap();
        assert_eq!(store.groups(&small).unwrap().encode(), small.as_bytes());
        assert!(!store.groups_path(&small).exists());
    }

    #[test]
    fn resumed_garbage_is_dropped_on_mismatch() {
        let (_dir, store) = store();
        let group = groups::GROUP as usize;
        let real = vec![7u8; 2 * group];
        let hash = ContentHash::of(&real);
        fs::write(store.partial_path(&hash), vec![0u8; group]).unwrap();
        let mut w = BlobWriter::resume(&store, hash).unwrap();
        assert_eq!(w.offset(), group as u64);
        w.write_chunk(&real[group..]).unwrap();
        assert!(matches!(
            w.finish(None),
            Err(BlobError::Mismatch { expected, .. }) if expected == hash
        ));
        assert!(!store.partial_path(&hash).exists());
        assert!(!store.has(&hash));
    }

    #[test]
    fn collection_removes_least_recently_used_blobs_not_kept_until_under_the_cap() {
        let (_dir, store) = store();
        // Five 1000-byte blobs used at t = 1000, 2000, ... seconds: b[0] the oldest.
        let b: Vec<ContentHash> = (0..5u8)
            .map(|i| {
                let h = store.import_bytes(&[i; 1000]).unwrap();
                let at = std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(1000 * (u64::from(i) + 1));
                File::options()
                    .write(true)
                    .open(store.path(&h))
                    .unwrap()
                    .set_modified(at)
                    .unwrap();
                h
            })
            .collect();
        fs::write(store.dir().join("ab").join("not-a-blob"), b"x").ok();
        // b[0] is used again now, so it is the most recent; b[1] is needed by an open job.
        store.touch(&b[0]);
        let listed: Vec<ContentHash> = store.list().unwrap().iter().map(|e| e.hash).collect();
        assert_eq!(listed, vec![b[1], b[2], b[3], b[4], b[0]]);
        let done = store.collect(2500, |e| e.hash == b[1]).unwrap();
        assert_eq!(
            done,
            Collected {
                removed: 3,
                freed: 3000,
                total: 2000
            }
        );
        assert!(store.has(&b[1]), "kept: an open job needs it");
        assert!(store.has(&b[0]), "kept: used most recently");
        for gone in &b[2..5] {
            assert!(!store.has(gone));
        }
        // Under the cap, nothing more goes.
        assert_eq!(store.collect(2500, |_| false).unwrap().removed, 0);
    }

    #[test]
    fn a_blob_used_while_collection_runs_is_kept() {
        let (_dir, store) = store();
        let h = store.import_bytes(&[7; 1000]).unwrap();
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        File::options()
            .write(true)
            .open(store.path(&h))
            .unwrap()
            .set_modified(old)
            .unwrap();
        // The listing saw it unused for ages; a submission uses it before it is removed
        // (here: inside the first question), and the second question sees that.
        let asked = std::cell::Cell::new(0);
        let done = store
            .collect(0, |e| {
                asked.set(asked.get() + 1);
                if asked.get() == 1 {
                    store.touch(&e.hash);
                    return false;
                }
                e.used > old
            })
            .unwrap();
        assert_eq!(done.removed, 0);
        assert!(store.has(&h));
    }
}
