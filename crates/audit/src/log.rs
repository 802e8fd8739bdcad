//! The live audit log: a handle that many tasks share and a single writer thread that commits
//! their records in groups.

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::error::{
    AppendError, Context, OpenError, QueryError, SealError, StoreError, TryAppendError, VerifyError,
};
use crate::query::{Page, Query, Stats, StatsQuery, query_dir, stats_dir};
use crate::record::{Anchor, ChainHash, Entry, chain_hash};
use crate::segment::{
    self, INSERT_RECORD, LOCK_FILE, SealRow, SegmentHeader, audit_dir, create_segment,
    finish_sealed, insert_record, is_writable, list_segments, open_reader, open_writer,
    read_header, read_seal,
};
use crate::verify::{VerifyReport, verify_dir};

/// What an acknowledgement promises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `synchronous = FULL`: the WAL is fsynced before a batch is acknowledged, so an acknowledged
    /// record survives a kill -9, a kernel crash and a power cut. Costs one fsync per batch.
    #[default]
    Full,
    /// `synchronous = NORMAL`: the batch is written to the WAL (the kernel's page cache) but not
    /// fsynced before the acknowledgement. An acknowledged record survives a kill -9 of the server,
    /// because the kernel still holds and later writes the data, but the last batches can be lost
    /// to a kernel crash or a power cut. The chain stays valid either way: SQLite only drops whole
    /// transactions from the end of the WAL.
    ProcessCrash,
}

/// How [`AuditLog::open`] sets up the log.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// The server's data directory; the log lives in `<data_dir>/audit/`.
    pub data_dir: PathBuf,
    /// What an acknowledged append promises.
    pub durability: Durability,
    /// Most records committed in one transaction.
    pub max_batch: usize,
    /// Appends waiting for the writer before `append` itself waits (back-pressure).
    pub queue_capacity: usize,
    /// Seal the active segment and start the next one after the commit that reaches a seq that
    /// is a multiple of this; 0 never seals on its own.
    pub seal_every_records: u64,
}

impl Config {
    /// Defaults: [`Durability::Full`], batches of up to 1024 records, a queue of 8192, no
    /// automatic seals.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            durability: Durability::Full,
            max_batch: 1024,
            queue_capacity: 8192,
            seal_every_records: 0,
        }
    }
}

/// A sealed segment, as returned by [`AuditLog::seal`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SealedSegment {
    /// Segment number, starting at 1.
    pub number: u32,
    /// The segment file, now read-only.
    pub path: PathBuf,
    /// First seq in the segment.
    pub first_seq: u64,
    /// Last seq in the segment.
    pub last_seq: u64,
    /// Hash of the last record, also the genesis prev_hash of the next segment.
    pub last_hash: ChainHash,
}

/// Counters of the writer thread, to check and monitor group commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct WriterStats {
    /// Transactions committed with at least one record.
    pub batches: u64,
    /// Records committed.
    pub records: u64,
    /// Largest number of records in one transaction.
    pub largest_batch: u64,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    records: AtomicU64,
    largest_batch: AtomicU64,
    /// Set when a commit fails, cleared when one succeeds.
    failing: AtomicBool,
}

#[expect(
    clippy::large_enum_variant,
    reason = "appends are nearly every command, so boxing the entry would add an allocation per record to save space only for rare seals"
)]
enum Command {
    Append {
        entry: Entry,
        ack: oneshot::Sender<Result<u64, AppendError>>,
    },
    Seal {
        ack: oneshot::Sender<Result<Option<SealedSegment>, SealError>>,
    },
}

/// Handle to the audit log; cheap to clone and shared by every task that records.
///
/// Dropping the last handle stops the writer thread after it has committed everything already
/// queued, and waits for it, so a new [`AuditLog::open`] of the same directory can follow.
#[derive(Clone, Debug)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    data_dir: PathBuf,
    sender: Option<mpsc::Sender<Command>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    head: Arc<Mutex<Anchor>>,
    counters: Arc<Counters>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel lets the writer drain what is queued and return.
        self.sender.take();
        let handle = self
            .writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            // A panicked writer has already failed every pending append with `Closed`; there is
            // nothing more to report from a destructor.
            let _ = handle.join();
        }
    }
}

impl AuditLog {
    /// Opens (or creates) the log under `config.data_dir`, takes its lock, recovers from an
    /// interrupted seal and starts the writer thread. Blocking; call it at startup.
    pub fn open(config: Config) -> Result<AuditLog, OpenError> {
        let dir = audit_dir(&config.data_dir);
        fs::create_dir_all(&dir).at(&dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .at(&lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(OpenError::Locked { path: lock_path }),
            Err(fs::TryLockError::Error(e)) => {
                return Err(StoreError::Io {
                    path: lock_path,
                    source: e,
                }
                .into());
            }
        }
        segment::remove_temporaries(&dir)?;

        let mut segments = list_segments(&dir)?;
        if segments.is_empty() {
            let header = SegmentHeader {
                number: 1,
                first_seq: 1,
                genesis: ChainHash::GENESIS,
            };
            segments.push((1, create_segment(&dir, header)?));
        }
        // Every segment but the last is sealed; finish any whose seal a crash interrupted.
        let (last_number, last_path) = segments.pop().unwrap_or_else(|| unreachable!());
        for (_, path) in &segments {
            finish_if_sealed(path)?;
        }
        let reader = open_reader(&last_path)?;
        let header = read_header(&reader, &last_path)?;
        if header.number != last_number {
            return Err(StoreError::Corrupt {
                path: last_path,
                reason: format!("header says segment {}", header.number),
            }
            .into());
        }
        let seal = read_seal(&reader, &last_path)?;
        drop(reader);
        let full_sync = config.durability == Durability::Full;
        let (active_path, header) = match seal {
            None => (last_path, header),
            Some(seal) => {
                // The crash came after the seal row was committed and before the next segment
                // existed: finish the seal now, exactly as `seal` would have.
                finish_if_sealed(&last_path)?;
                let next = SegmentHeader {
                    number: last_number + 1,
                    first_seq: seal.last_seq + 1,
                    genesis: seal.last_hash,
                };
                (create_segment(&dir, next)?, next)
            }
        };
        let conn = open_writer(&active_path, full_sync)?;
        let (head_seq, head_hash) = segment::last_record(&conn, &active_path)?
            .unwrap_or((header.first_seq.saturating_sub(1), header.genesis));
        let head = Arc::new(Mutex::new(Anchor {
            seq: head_seq,
            hash: head_hash,
        }));
        let counters = Arc::new(Counters::default());
        let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let writer = Writer {
            dir,
            full_sync,
            max_batch: config.max_batch.max(1),
            seal_every: config.seal_every_records,
            active: Some(Active {
                conn,
                path: active_path,
                header,
            }),
            segment_number: header.number,
            head_seq,
            head_hash,
            shared_head: Arc::clone(&head),
            counters: Arc::clone(&counters),
            _lock: lock,
        };
        let handle = std::thread::Builder::new()
            .name("cordon-audit-writer".to_owned())
            .spawn(move || writer.run(receiver))
            .map_err(OpenError::Thread)?;
        Ok(AuditLog {
            inner: Arc::new(Inner {
                data_dir: config.data_dir,
                sender: Some(sender),
                writer: Mutex::new(Some(handle)),
                head,
                counters,
            }),
        })
    }

    fn sender(&self) -> Result<&mpsc::Sender<Command>, ()> {
        self.inner.sender.as_ref().ok_or(())
    }

    /// Appends one record and resolves with its seq once the transaction holding it is committed
    /// with the configured [`Durability`].
    ///
    /// If the future is dropped after the entry was queued, the entry is still committed, just not
    /// acknowledged. An entry that was never acknowledged can be lost to a kill -9.
    pub async fn append(&self, entry: Entry) -> Result<u64, AppendError> {
        match self.try_append(entry) {
            Ok(appending) => appending.await,
            Err(TryAppendError::Full(entry)) => {
                let (ack, done) = oneshot::channel();
                let sender = self.sender().map_err(|()| AppendError::Closed)?;
                sender
                    .send(Command::Append { entry: *entry, ack })
                    .await
                    .map_err(|_| AppendError::Closed)?;
                Appending { done }.await
            }
            Err(TryAppendError::Append(error)) => Err(error),
        }
    }

    /// Queues one record without waiting, for callers that must not yield before the record is
    /// queued. The returned [`Appending`] resolves like [`AuditLog::append`]; dropping it does
    /// not withdraw the record. When the queue is full the entry comes back in
    /// [`TryAppendError::Full`], and [`AuditLog::append`] is the way to wait for room.
    pub fn try_append(&self, entry: Entry) -> Result<Appending, TryAppendError> {
        entry.validate().map_err(AppendError::from)?;
        let sender = self.sender().map_err(|()| AppendError::Closed)?;
        let (ack, done) = oneshot::channel();
        match sender.try_send(Command::Append { entry, ack }) {
            Ok(()) => Ok(Appending { done }),
            Err(mpsc::error::TrySendError::Full(Command::Append { entry, .. })) => {
                Err(TryAppendError::Full(Box::new(entry)))
            }
            Err(_) => Err(AppendError::Closed.into()),
        }
    }

    /// Seals the active segment after everything appended before this call, and starts the next
    /// segment whose genesis prev_hash is the sealed segment's last hash. Returns `None` when the
    /// active segment is empty, since an empty sealed segment would record nothing.
    pub async fn seal(&self) -> Result<Option<SealedSegment>, SealError> {
        let (ack, done) = oneshot::channel();
        let sender = self.sender().map_err(|()| SealError::Closed)?;
        sender
            .send(Command::Seal { ack })
            .await
            .map_err(|_| SealError::Closed)?;
        done.await.map_err(|_| SealError::Closed)?
    }

    /// The last acknowledged record. Storing it outside the data directory makes truncation and
    /// rewrites detectable (see [`crate::verify_dir_with_anchor`]).
    pub fn head(&self) -> Anchor {
        *self
            .inner
            .head
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Group-commit counters.
    pub fn writer_stats(&self) -> WriterStats {
        let c = &self.inner.counters;
        WriterStats {
            batches: c.batches.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            largest_batch: c.largest_batch.load(Ordering::Relaxed),
        }
    }

    /// Whether the writer's last attempt to commit records failed (a full disk, a segment that
    /// could not be created), or the writer thread is gone. A failed commit clears with the next
    /// one that succeeds, so a server that refuses calls while this is set must keep appending
    /// the records of its refusals: they are what finds out that the log works again.
    pub fn is_failing(&self) -> bool {
        self.inner.counters.failing.load(Ordering::Relaxed)
            || self.sender().map_or(true, mpsc::Sender::is_closed)
    }

    /// The data directory this log was opened in.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// [`query_dir`] on a blocking thread.
    pub async fn query(&self, query: Query) -> Result<Page, QueryError> {
        let dir = self.inner.data_dir.clone();
        tokio::task::spawn_blocking(move || query_dir(&dir, &query))
            .await
            .map_err(|_| QueryError::Interrupted)?
    }

    /// [`stats_dir`] on a blocking thread.
    pub async fn stats(&self, query: StatsQuery) -> Result<Stats, QueryError> {
        let dir = self.inner.data_dir.clone();
        tokio::task::spawn_blocking(move || stats_dir(&dir, &query))
            .await
            .map_err(|_| QueryError::Interrupted)?
    }

    /// [`verify_dir`] on a blocking thread. It reads committed data only, so it can run while
    /// records are appended; it then checks a prefix of the log.
    pub async fn verify(&self) -> Result<VerifyReport, VerifyError> {
        let dir = self.inner.data_dir.clone();
        tokio::task::spawn_blocking(move || verify_dir(&dir))
            .await
            .map_err(|_| VerifyError::Interrupted)?
    }
}

/// A queued record: resolves with its seq once the transaction holding it is committed.
#[derive(Debug)]
#[must_use = "a record is only known to be committed once this resolves"]
pub struct Appending {
    done: oneshot::Receiver<Result<u64, AppendError>>,
}

impl Future for Appending {
    type Output = Result<u64, AppendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.done)
            .poll(cx)
            .map(|acked| acked.unwrap_or(Err(AppendError::Closed)))
    }
}

fn finish_if_sealed(path: &Path) -> Result<(), StoreError> {
    if !is_writable(path)? {
        return Ok(());
    }
    let conn = Connection::open(path).at(path)?;
    if read_seal(&conn, path)?.is_some() {
        finish_sealed(conn, path)?;
    }
    Ok(())
}

struct Active {
    conn: Connection,
    path: PathBuf,
    header: SegmentHeader,
}

/// State owned by the writer thread. Only this thread writes to the database, so `head_seq` and
/// `head_hash` are the truth and no read-modify-write race can fork the chain.
struct Writer {
    dir: PathBuf,
    full_sync: bool,
    max_batch: usize,
    /// See [`Config::seal_every_records`].
    seal_every: u64,
    /// `None` after a seal whose follow-up failed; the next command retries creating the segment.
    active: Option<Active>,
    segment_number: u32,
    head_seq: u64,
    head_hash: ChainHash,
    shared_head: Arc<Mutex<Anchor>>,
    counters: Arc<Counters>,
    /// Held for the writer's lifetime; the OS releases it even on kill -9.
    _lock: fs::File,
}

/// How long [`Writer::gather`] waits for more appends once several are queued: small next to
/// one fsync.
const LINGER: std::time::Duration = std::time::Duration::from_micros(100);

type PendingAppend = (Entry, oneshot::Sender<Result<u64, AppendError>>);

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<Command>) {
        let mut commands = Vec::with_capacity(self.max_batch);
        let mut appends: Vec<PendingAppend> = Vec::with_capacity(self.max_batch);
        while let Some(first) = receiver.blocking_recv() {
            // Everything that queued up during the previous commit goes into this one: that is
            // the group commit.
            commands.push(first);
            self.gather(&mut receiver, &mut commands);
            for command in commands.drain(..) {
                match command {
                    Command::Append { entry, ack } => appends.push((entry, ack)),
                    Command::Seal { ack } => {
                        self.commit(&mut appends);
                        // The caller may have gone away; the seal stands regardless.
                        let _ = ack.send(self.seal());
                    }
                }
            }
            self.commit(&mut appends);
        }
    }

    /// Seals after a commit whose records reached a multiple of `seal_every`, once the batch is
    /// acknowledged. A failed seal leaves the segment active, and the next multiple tries again.
    fn seal_if_due(&mut self, before: u64) {
        if self.seal_every == 0 || before / self.seal_every == self.head_seq / self.seal_every {
            return;
        }
        match self.seal() {
            Ok(Some(sealed)) => tracing::info!(
                segment = sealed.number,
                last_seq = sealed.last_seq,
                "audit segment sealed"
            ),
            Ok(None) => {}
            Err(error) => tracing::error!(%error, "sealing the audit segment failed"),
        }
    }

    /// Adds to `commands` what is queued now and, when that is more than one command (appends
    /// are arriving concurrently), what arrives during one short wait of [`LINGER`]: the
    /// appenders acknowledged by the previous commit are still being scheduled, and without the
    /// wait a commit would take only the first few of them and the rest would pay for a
    /// separate fsync. A lone command is committed at once, so an idle log adds no latency.
    /// One wait rather than several short ones, because each wait is two context switches:
    /// polling in 20 µs steps cost the audited server 3 to 13% of its calls per second.
    fn gather(&self, receiver: &mut mpsc::Receiver<Command>, commands: &mut Vec<Command>) {
        let drain = |receiver: &mut mpsc::Receiver<Command>, commands: &mut Vec<Command>| {
            while commands.len() < self.max_batch {
                match receiver.try_recv() {
                    Ok(command) => commands.push(command),
                    Err(_) => break,
                }
            }
        };
        drain(receiver, commands);
        if commands.len() < 2 || commands.len() >= self.max_batch {
            return;
        }
        std::thread::sleep(LINGER);
        drain(receiver, commands);
    }

    fn ensure_active(&mut self) -> Result<&mut Active, StoreError> {
        if self.active.is_none() {
            let header = SegmentHeader {
                number: self.segment_number + 1,
                first_seq: self.head_seq + 1,
                genesis: self.head_hash,
            };
            let path = create_segment(&self.dir, header)?;
            let conn = open_writer(&path, self.full_sync)?;
            self.segment_number = header.number;
            self.active = Some(Active { conn, path, header });
        }
        Ok(self.active.as_mut().unwrap_or_else(|| unreachable!()))
    }

    fn commit(&mut self, appends: &mut Vec<PendingAppend>) {
        if appends.is_empty() {
            return;
        }
        match self.write_batch(appends) {
            Ok(first_seq) => {
                self.counters.failing.store(false, Ordering::Relaxed);
                let count = appends.len() as u64;
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                self.counters.records.fetch_add(count, Ordering::Relaxed);
                self.counters
                    .largest_batch
                    .fetch_max(count, Ordering::Relaxed);
                for (offset, (_, ack)) in (0u64..).zip(appends.drain(..)) {
                    // A caller that stopped waiting still has its record committed.
                    let _ = ack.send(Ok(first_seq + offset));
                }
                self.seal_if_due(first_seq - 1);
            }
            Err(error) => {
                self.counters.failing.store(true, Ordering::Relaxed);
                let error = Arc::new(error);
                for (_, ack) in appends.drain(..) {
                    let _ = ack.send(Err(AppendError::Store(Arc::clone(&error))));
                }
            }
        }
    }

    /// Writes the batch in one transaction; the in-memory head moves only once it is committed,
    /// so a failed batch leaves no gap in the chain.
    fn write_batch(&mut self, appends: &[PendingAppend]) -> Result<u64, StoreError> {
        let mut seq = self.head_seq;
        let mut prev = self.head_hash;
        let active = self.ensure_active()?;
        let path = active.path.clone();
        let tx = active.conn.transaction().at(&path)?;
        {
            let mut stmt = tx.prepare_cached(INSERT_RECORD).at(&path)?;
            for (entry, _) in appends.iter() {
                seq += 1;
                let hash = chain_hash(&prev, seq, entry);
                insert_record(&mut stmt, seq, entry, &prev, &hash).at(&path)?;
                prev = hash;
            }
        }
        tx.commit().at(&path)?;
        let first = self.head_seq + 1;
        self.head_seq = seq;
        self.head_hash = prev;
        *self
            .shared_head
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Anchor { seq, hash: prev };
        Ok(first)
    }

    fn seal(&mut self) -> Result<Option<SealedSegment>, SealError> {
        let (head_seq, head_hash) = (self.head_seq, self.head_hash);
        let active = self.ensure_active()?;
        let first_seq = active.header.first_seq;
        if head_seq < first_seq {
            return Ok(None);
        }
        let seal = SealRow {
            last_seq: head_seq,
            record_count: head_seq - first_seq + 1,
            last_hash: head_hash,
        };
        segment::insert_seal(&mut active.conn, &active.path, &seal)?;
        let Active { conn, path, header } = self.active.take().unwrap_or_else(|| unreachable!());
        finish_sealed(conn, &path)?;
        self.ensure_active()?;
        Ok(Some(SealedSegment {
            number: header.number,
            path,
            first_seq,
            last_seq: head_seq,
            last_hash: head_hash,
        }))
    }
}
