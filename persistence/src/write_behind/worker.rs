//! The write-behind task: takes batches in order (outbox first, then memory), coalesces,
//! writes them in groups, and spills, retries or gives up when the store fails.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

// tokio's clock, so tests can pause it.
use tokio::time::Instant;

use super::coalesce::{CallRows, IdSet, coalesce_positions};
use super::{MAX_SPARE_ROWS, MIN_SPARE_CAPACITY, Queued, Shared, WriteBehindConfig, keep_spare, split};
use crate::outbox::{self, Outbox};
use crate::{Handoff, PositionRow, Storage, StorageError, WriteBatch};

/// The settings the task uses, as durations.
struct Settings {
    spill_rows: usize,
    max_outbox_bytes: u64,
    max_group_batches: usize,
    max_group_rows: usize,
    max_call_rows: usize,
    commit_interval: Duration,
    write_timeout: Duration,
    retry_min: Duration,
    retry_max: Duration,
    max_attempts: u32,
    write_rows_per_s: u64,
}

/// Batches being written (or retried) in one store call.
struct Group {
    batches: Vec<WriteBatch>,
    /// Where they came from: memory, or the outbox (with the frames to consume on success).
    outbox: Option<outbox::Group>,
}

pub(super) struct Worker<S> {
    shared: Arc<Shared>,
    store: Arc<S>,
    outbox: Option<Outbox>,
    s: Settings,
    seen: IdSet,
    /// Sizes the next call (`max_call_rows`, counted after coalescing).
    call: CallRows,
    current: Option<Group>,
    last_call: Option<Instant>,
    backoff: Duration,
    /// Non-transient failures of the batch at the head.
    attempts: u32,
    /// Take one batch only next time (to find which batch of a group the store refuses).
    isolate: bool,
    /// Most batches and rows in the next group: the settings, halved after each call that
    /// timed out and doubled back after each success, so a group too big for its timeout
    /// shrinks until it lands instead of being retried unchanged forever.
    group_batches: usize,
    group_rows: usize,
    /// No spill attempt before this (after a failed spill: disk full, outbox bound).
    spill_paused_until: Option<Instant>,
    /// Row buffers of written batches, to turn the next columns into rows without page faults.
    rows_pool: Vec<Vec<PositionRow>>,
}

impl<S: Storage> Worker<S> {
    pub fn new(shared: Arc<Shared>, store: Arc<S>, c: &WriteBehindConfig, outbox: Option<Outbox>) -> Self {
        let ms = Duration::from_millis;
        Self {
            shared,
            store,
            outbox,
            s: Settings {
                spill_rows: c.spill_queued_rows,
                max_outbox_bytes: c.max_outbox_bytes,
                max_group_batches: c.max_group_batches,
                max_group_rows: c.max_group_rows,
                max_call_rows: c.max_call_rows,
                commit_interval: ms(c.commit_interval_ms),
                write_timeout: ms(c.write_timeout_ms),
                retry_min: ms(c.retry_min_ms),
                retry_max: ms(c.retry_max_ms),
                max_attempts: c.max_attempts,
                write_rows_per_s: c.write_rows_per_s,
            },
            seen: IdSet::default(),
            call: CallRows::default(),
            current: None,
            last_call: None,
            backoff: ms(c.retry_min_ms),
            attempts: 0,
            isolate: false,
            group_batches: c.max_group_batches,
            group_rows: c.max_group_rows,
            spill_paused_until: None,
            rows_pool: Vec::new(),
        }
    }

    pub async fn run(mut self) {
        loop {
            self.free_garbage();
            let (closing, deadline) = {
                let q = self.shared.lock();
                (q.closed, q.deadline)
            };
            if closing && deadline.is_some_and(|d| Instant::now() >= d) {
                self.stop_now();
                return;
            }
            let degraded = self.shared.degraded.load(Ordering::Relaxed);
            if degraded || self.shared.lock().rows > self.s.spill_rows {
                self.spill_queue();
            }
            if self.current.is_none() {
                if !self.has_work() {
                    if closing {
                        self.finish(0);
                        return;
                    }
                    self.shared.wake.notified().await;
                    continue;
                }
                if !closing && !self.urgent() && self.pace().await {
                    continue;
                }
                self.current = self.next_group().await;
                if self.current.is_none() {
                    continue;
                }
            }
            self.write_current(closing.then_some(deadline).flatten()).await;
        }
    }

    /// True when memory or the outbox holds batches; otherwise marks the queue idle (under the
    /// same lock, so a batch submitted meanwhile is never missed) and wakes flushers.
    fn has_work(&self) -> bool {
        let pending_outbox = self.outbox.as_ref().is_some_and(|o| o.pending() > 0);
        let mut q = self.shared.lock();
        if pending_outbox || !q.batches.is_empty() {
            return true;
        }
        if !q.idle {
            q.idle = true;
            drop(q);
            self.shared.changed.notify_all();
            self.shared.idle_notify.notify_waiters();
        }
        false
    }

    /// Someone waits in `flush`, or a full call waits: no reason to wait for more batches.
    fn urgent(&self) -> bool {
        let q = self.shared.lock();
        q.flushers > 0 || q.rows >= self.s.max_call_rows
    }

    /// Waits for the commit interval since the last call; true when it waited (or was woken),
    /// so the caller re-checks everything before taking a group.
    async fn pace(&self) -> bool {
        let Some(next) = self.last_call.map(|t| t + self.s.commit_interval) else {
            return false;
        };
        if Instant::now() >= next {
            return false;
        }
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = self.shared.wake.notified() => {}
        }
        true
    }

    /// The next batches to write: from the outbox while it holds any (they are older), else
    /// from memory; position rows that a later batch of the group overwrites are dropped.
    async fn next_group(&mut self) -> Option<Group> {
        let max = if self.isolate { 1 } else { self.group_batches };
        let max_rows = self.group_rows;
        let call_rows = self.s.max_call_rows;
        if let Some(ob) = self.outbox.as_mut().filter(|o| o.pending() > 0) {
            let call = &mut self.call;
            call.reset();
            let mut g = match blocking(|| ob.read_call(max, max_rows, |b| call.take(b, &[], call_rows))) {
                Ok(g) => g,
                Err(e) => {
                    let text = format!("cannot read outbox {}: {e}", ob.path().display());
                    tracing::error!(error = %text, "retrying");
                    self.set_error(&text);
                    self.wait_backoff(None, None).await;
                    return None;
                }
            };
            for &(bytes, rows) in &g.skipped {
                tracing::error!(path = %ob.path().display(), bytes, rows, "damaged outbox frame lost");
                let c = &self.shared.counters;
                c.failed_batches.fetch_add(1, Ordering::Relaxed);
                c.writes_dropped.fetch_add(rows, Ordering::Relaxed);
                c.outbox_frames_lost.fetch_add(1, Ordering::Relaxed);
                c.outbox_bytes_lost.fetch_add(bytes, Ordering::Relaxed);
            }
            let mut batches = std::mem::take(&mut g.batches);
            if batches.is_empty() {
                if let Err(e) = blocking(|| ob.consume(&g)) {
                    tracing::error!(error = %e, "cannot advance the outbox");
                }
                self.update_outbox_gauges();
                return None;
            }
            self.coalesce(&mut batches);
            return Some(Group { batches, outbox: Some(g) });
        }
        let mut taken = Vec::new();
        {
            let mut q = self.shared.lock();
            let mut rows = 0usize;
            self.call.reset();
            while taken.len() < max && (taken.is_empty() || rows < max_rows) {
                let Some(w) = q.batches.front() else { break };
                if !self.call.take(&w.handoff.batch, &w.handoff.positions.ids, call_rows) {
                    break;
                }
                let Some(w) = q.batches.pop_front() else { break };
                rows += w.len();
                taken.push(w);
            }
            q.rows -= rows;
            q.positions_from = q.positions_from.saturating_sub(taken.len());
            q.taking = !taken.is_empty();
        }
        if taken.is_empty() {
            return None;
        }
        let batches = blocking(|| {
            let mut batches = self.materialize(taken);
            // A handoff cut into parts: this call takes the parts that fit, the rest goes back
            // to the front of the queue, in order.
            self.call.reset();
            let mut n = 0;
            while n < batches.len() && n < max && self.call.take(&batches[n], &[], call_rows) {
                n += 1;
            }
            let rest = batches.split_off(n);
            if !rest.is_empty() {
                self.put_back(rest);
            }
            self.coalesce(&mut batches);
            batches
        });
        self.shared.lock().taking = false;
        Some(Group { batches, outbox: None })
    }

    fn coalesce(&mut self, batches: &mut [WriteBatch]) {
        let n = coalesce_positions(batches, &mut self.seen);
        self.shared.counters.rows_coalesced.fetch_add(n, Ordering::Relaxed);
    }

    async fn write_current(&mut self, deadline: Option<Instant>) {
        let group = self.current.as_ref().expect("called with a group");
        // While shutting down, a call may not outlive the deadline (what it held then goes to
        // the outbox instead).
        let rows: usize = group.batches.iter().map(WriteBatch::len).sum();
        let timeout = self.s.write_timeout + rows_time(rows, self.s.write_rows_per_s);
        let limit = match deadline {
            Some(d) => {
                timeout.min(d.saturating_duration_since(Instant::now()).max(Duration::from_millis(10)))
            }
            None => timeout,
        };
        let c = &self.shared.counters;
        let from_memory = group.outbox.is_none();
        c.in_flight_batches
            .store(if from_memory { group.batches.len() as u64 } else { 0 }, Ordering::Relaxed);
        c.in_flight_rows.store(if from_memory { rows as u64 } else { 0 }, Ordering::Relaxed);
        let started = Instant::now();
        let result = tokio::time::timeout(limit, self.store.write(&group.batches)).await;
        tracing::debug!(
            batches = group.batches.len(),
            rows,
            ms = started.elapsed().as_millis() as u64,
            ok = matches!(result, Ok(Ok(()))),
            "store call"
        );
        c.in_flight_batches.store(0, Ordering::Relaxed);
        c.in_flight_rows.store(0, Ordering::Relaxed);
        self.shared.counters.store_calls.fetch_add(1, Ordering::Relaxed);
        self.last_call = Some(Instant::now());
        match result {
            Ok(Ok(())) => self.on_success(),
            Ok(Err(e)) => self.on_failure(e, deadline).await,
            Err(_) => self.on_failure(StorageError::Timeout(limit), deadline).await,
        }
    }

    fn on_success(&mut self) {
        let group = self.current.take().expect("called with a group");
        let c = &self.shared.counters;
        let add = |a: &std::sync::atomic::AtomicU64, n: usize| a.fetch_add(n as u64, Ordering::Relaxed);
        for b in &group.batches {
            add(&c.position_rows_written, b.positions.len());
            add(&c.metric_rows_written, b.metrics.len());
            add(&c.event_rows_written, b.events.len());
            add(&c.npc_rows_written, b.npcs.len() + b.removed.len());
        }
        add(&c.batches_written, group.batches.len());
        // Frames leave the outbox's gauge before their batches count as settled: a reader of
        // the stats never sees one batch both settled and waiting in the outbox, so
        // `settled_through_seq + outbox_batches` never claims more than is safe.
        if let Some(g) = &group.outbox {
            add(&c.batches_replayed, group.batches.len());
            if let Some(ob) = self.outbox.as_mut()
                && let Err(e) = blocking(|| ob.consume(g))
            {
                // The frames stay; a later replay sends them again, and the store skips them.
                tracing::error!(error = %e, "cannot advance the outbox after a replay");
            }
            self.update_outbox_gauges();
        }
        self.shared.settle(&group.batches, true);
        if group.outbox.is_none() {
            self.recycle(group.batches);
        }
        if self.shared.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!(store = self.store.name(), "storage recovered");
        }
        self.shared.breaker_open.store(false, Ordering::Relaxed);
        self.backoff = self.s.retry_min;
        self.attempts = 0;
        self.isolate = false;
        self.group_batches = (self.group_batches.saturating_mul(2)).min(self.s.max_group_batches);
        self.group_rows = (self.group_rows.saturating_mul(2)).min(self.s.max_group_rows);
    }

    async fn on_failure(&mut self, e: StorageError, deadline: Option<Instant>) {
        self.shared.counters.store_errors.fetch_add(1, Ordering::Relaxed);
        let text = error_chain(&e);
        self.set_error(&text);
        if !self.shared.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(store = self.store.name(), error = %text, "storage failing; batches will wait (and spill to the outbox)");
        }
        let retry_after = match &e {
            StorageError::CircuitOpen { retry_after } => Some(*retry_after),
            _ => None,
        };
        self.shared.breaker_open.store(retry_after.is_some(), Ordering::Relaxed);
        if !e.is_transient() && retry_after.is_none() {
            self.refused(&text);
        }
        if matches!(e, StorageError::Timeout(_)) && deadline.is_none() {
            self.shrink();
        }
        // Keep what failed on disk while the store is down (the outbox is empty whenever the
        // group came from memory, so order is kept).
        if self.current.as_ref().is_some_and(|g| g.outbox.is_none()) && self.outbox.is_some() {
            let group = self.current.take().expect("checked above");
            if let Err(batches) = self.spill(group.batches) {
                self.current = Some(Group { batches, outbox: None });
            }
        }
        self.wait_backoff(retry_after, deadline).await;
    }

    /// The group timed out: halve the next groups (batches and rows), and cut the current one
    /// down to the first half (the rest goes back to the front of the queue, in order; a group
    /// from the outbox is read again with the smaller limits).
    fn shrink(&mut self) {
        let Some(group) = self.current.as_mut() else { return };
        let rows: usize = group.batches.iter().map(WriteBatch::len).sum();
        self.group_batches = (group.batches.len() / 2).max(1);
        self.group_rows = (rows / 2).max(1);
        tracing::warn!(
            batches = group.batches.len(),
            rows,
            next_batches = self.group_batches,
            "store call timed out; halving the group"
        );
        if group.batches.len() > 1 {
            if group.outbox.is_some() {
                self.current = None;
            } else {
                let rest = group.batches.split_off(self.group_batches);
                self.put_back(rest);
            }
        }
    }

    /// The store refused the group with a non-transient error: narrow it down to one batch,
    /// and give that batch up after `max_attempts`.
    fn refused(&mut self, text: &str) {
        let Some(group) = self.current.as_mut() else { return };
        // Until this is settled, one batch per call, so attempts count against one batch.
        self.isolate = true;
        if group.batches.len() > 1 {
            if group.outbox.is_some() {
                // Read again from the same place, one batch at a time.
                self.current = None;
            } else {
                let rest = group.batches.split_off(1);
                self.put_back(rest);
            }
            return;
        }
        self.attempts += 1;
        if self.attempts < self.s.max_attempts {
            return;
        }
        self.attempts = 0;
        self.isolate = false;
        let group = self.current.take().expect("checked above");
        self.shared.settle(&group.batches, false);
        for b in &group.batches {
            let kept = if self.outbox.is_some() {
                "kept in <outbox>.dead; replay_dead queues it again"
            } else {
                "no outbox: lost"
            };
            tracing::error!(batch = %b.id, rows = b.len(), error = text, "store refused the batch {} times; giving up ({kept})", self.s.max_attempts);
            self.shared.counters.failed_batches.fetch_add(1, Ordering::Relaxed);
            self.shared.counters.writes_dropped.fetch_add(b.len() as u64, Ordering::Relaxed);
            if let Some(ob) = self.outbox.as_mut()
                && let Err(e) = blocking(|| ob.dead_letter(b))
            {
                tracing::error!(error = %e, "cannot write the dead-letter file");
            }
        }
        if let (Some(g), Some(ob)) = (&group.outbox, self.outbox.as_mut())
            && let Err(e) = blocking(|| ob.consume(g))
        {
            tracing::error!(error = %e, "cannot advance the outbox");
        }
        self.update_outbox_gauges();
    }

    /// Sleeps before the next try; only the shutdown deadline cuts it short.
    async fn wait_backoff(&mut self, at_least: Option<Duration>, deadline: Option<Instant>) {
        let delay = at_least.map_or(self.backoff, |d| d.max(self.backoff));
        self.backoff = (self.backoff * 2).min(self.s.retry_max);
        let mut end = Instant::now() + delay;
        if let Some(d) = deadline {
            end = end.min(d);
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(end) => return,
                () = self.shared.wake.notified() => {
                    self.free_garbage();
                    {
                        let q = self.shared.lock();
                        if let (true, Some(d)) = (q.closed, q.deadline) {
                            end = end.min(d);
                        }
                    }
                    // While the store is down (an open breaker can mean a minute), what arrives
                    // goes to disk now rather than waiting in memory for the backoff to end.
                    if self.shared.degraded.load(Ordering::Relaxed) {
                        self.spill_queue();
                    }
                }
            }
        }
    }

    /// Moves every batch waiting in memory to the outbox (store failing, or too much waiting).
    fn spill_queue(&mut self) {
        if self.outbox.is_none()
            || self.current.as_ref().is_some_and(|g| g.outbox.is_none())
            || self.spill_paused_until.is_some_and(|t| Instant::now() < t)
        {
            return;
        }
        let taken: Vec<Queued> = {
            let mut q = self.shared.lock();
            q.rows = 0;
            q.positions_from = 0;
            q.batches.drain(..).collect()
        };
        if taken.is_empty() {
            return;
        }
        let batches = blocking(|| {
            let mut batches = self.materialize(taken);
            self.coalesce(&mut batches);
            batches
        });
        if let Err(batches) = self.spill(batches) {
            self.put_back(batches);
        }
    }

    /// Puts batches back at the front of the queue, in order.
    fn put_back(&self, batches: Vec<WriteBatch>) {
        let mut q = self.shared.lock();
        q.rows += batches.iter().map(WriteBatch::len).sum::<usize>();
        q.positions_from = 0;
        for batch in batches.into_iter().rev() {
            q.batches.push_front(Queued { handoff: Handoff { batch, ..Handoff::default() }, parts: 1 });
        }
    }

    /// Turns handed-over columns into rows (into recycled buffers), gives the columns back to
    /// the batcher, and cuts each handoff into the parts it holds ids for.
    fn materialize(&mut self, taken: Vec<Queued>) -> Vec<WriteBatch> {
        let mut batches = Vec::with_capacity(taken.len());
        let mut columns = Vec::new();
        for Queued { handoff: Handoff { mut batch, positions, .. }, parts } in taken {
            if !positions.is_empty() {
                if batch.positions.is_empty()
                    && let Some(mut buf) = self.rows_pool.pop()
                {
                    buf.clear();
                    batch.positions = buf;
                }
                positions.append_to(&mut batch.positions);
            }
            columns.push(positions);
            batches.extend(split::split(batch, parts));
        }
        let mut q = self.shared.lock();
        let surplus: Vec<_> = columns.into_iter().filter_map(|c| keep_spare(&mut q.spare, c)).collect();
        drop(q);
        drop(surplus);
        batches
    }

    /// Appends batches to the outbox; gives them back when that fails.
    fn spill(&mut self, batches: Vec<WriteBatch>) -> Result<(), Vec<WriteBatch>> {
        let Some(ob) = self.outbox.as_mut() else { return Err(batches) };
        let max_bytes = self.s.max_outbox_bytes;
        match blocking(|| ob.append(&batches, max_bytes)) {
            Ok(_) => {
                self.shared.counters.batches_spilled.fetch_add(batches.len() as u64, Ordering::Relaxed);
                self.spill_paused_until = None;
                self.update_outbox_gauges();
                self.recycle(batches);
                Ok(())
            }
            Err(e) => {
                tracing::error!(path = %ob.path().display(), error = %e, "cannot spill to the outbox; batches stay in memory");
                self.spill_paused_until = Some(Instant::now() + self.s.retry_max);
                Err(batches)
            }
        }
    }

    /// Shutdown deadline passed: everything still in memory goes to the outbox, or is counted
    /// as dropped when there is none (or it fails).
    fn stop_now(&mut self) {
        let mut left: Vec<WriteBatch> =
            self.current.take().filter(|g| g.outbox.is_none()).map(|g| g.batches).unwrap_or_default();
        let taken: Vec<Queued> = {
            let mut q = self.shared.lock();
            q.rows = 0;
            q.positions_from = 0;
            q.batches.drain(..).collect()
        };
        left.extend(self.materialize(taken));
        if !left.is_empty() {
            self.coalesce(&mut left);
            if let Err(lost) = self.spill(left) {
                self.shared.settle(&lost, false);
                let rows: usize = lost.iter().map(WriteBatch::len).sum();
                tracing::error!(
                    batches = lost.len(),
                    rows,
                    "shutdown: store unavailable and no outbox; batches dropped"
                );
                self.shared.counters.failed_batches.fetch_add(lost.len() as u64, Ordering::Relaxed);
                self.shared.counters.writes_dropped.fetch_add(rows as u64, Ordering::Relaxed);
            }
        }
        let pending = self.outbox.as_ref().map_or(0, Outbox::pending);
        if pending > 0 {
            tracing::warn!(batches = pending, "shutdown: batches left in the outbox for the next start");
        }
        self.finish(pending);
    }

    fn finish(&self, left_in_outbox: u64) {
        let mut q = self.shared.lock();
        q.stopped = true;
        q.idle = true;
        q.left_in_outbox = left_in_outbox;
        drop(q);
        self.shared.changed.notify_all();
        self.shared.idle_notify.notify_waiters();
    }

    /// Keeps the row buffers of written batches for the next columns to fill.
    fn recycle(&mut self, batches: Vec<WriteBatch>) {
        for b in batches {
            if self.rows_pool.len() >= MAX_SPARE_ROWS {
                break;
            }
            if b.positions.capacity() >= MIN_SPARE_CAPACITY {
                self.rows_pool.push(b.positions);
            }
        }
    }

    /// Frees buffers the tick superseded but the pool had no room for.
    fn free_garbage(&self) {
        let garbage = std::mem::take(&mut self.shared.lock().garbage);
        drop(garbage);
    }

    fn update_outbox_gauges(&self) {
        let (pending, bytes) = self.outbox.as_ref().map_or((0, 0), |o| (o.pending(), o.bytes()));
        self.shared.counters.outbox_batches.store(pending, Ordering::Relaxed);
        self.shared.counters.outbox_bytes.store(bytes, Ordering::Relaxed);
    }

    fn set_error(&self, text: &str) {
        *self.shared.lock_error() = Some(text.to_string());
    }
}

/// Runs blocking work (file I/O with fsync, converting or coalescing millions of rows) so that
/// it does not hold up other tasks of the runtime: on a multi-threaded runtime (a game server's
/// HTTP runtime) the thread hands its other tasks over first; on a current-thread runtime
/// (tests) it simply runs.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// How long `rows` take at `rows_per_s`.
fn rows_time(rows: usize, rows_per_s: u64) -> Duration {
    let micros = (rows as u128 * 1_000_000) / u128::from(rows_per_s.max(1));
    Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
}

/// An error and its sources, `outer: inner: …`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
