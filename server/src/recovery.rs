//! Recovery at start (`--restore auto|required`): rebuild the zone from the newest snapshot that
//! verifies, then replay the input journal from that snapshot's tick to the journal's end.
//!
//! Candidates are read from every configured store (hot Redis, cold PostgreSQL, files); each must
//! decode, match the zone file's digest and the seed, and not be ahead of the journal (a snapshot
//! the journal cannot continue from would break replay). The newest wins; on a tie the hot store
//! is preferred, then cold, then files. Because the core is deterministic, the restored state is
//! exactly what `zone-replay` computes for the same journal, and what is lost in a crash is
//! bounded by the journal's flush interval, not by the snapshot interval. Every step logs what it
//! chose and why.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use zone_persistence::snapshot::{SnapshotKind, decode_meta, recover};
use zone_persistence::store::{Chain, FileStore, PostgresStore, RedisStore, SnapshotStore, StoreError};
use zone_persistence::{JournalReader, Record};
use zone_sim::{ShardExecutor, Zone, ZoneState};

use crate::persist::PersistConfig;
use crate::zone_load::LoadedZone;

/// Where the restored state came from.
pub struct Restored {
    pub zone: Zone,
    /// `redis`, `postgres`, `file`, `journal` (replayed from tick 0) .
    pub source: &'static str,
    pub snapshot_tick: Option<u64>,
    /// Ticks replayed from the journal on top of the snapshot.
    pub replayed_ticks: u64,
    /// Length of the journal's whole records: continue writing it from here.
    pub journal_valid_len: Option<u64>,
}

struct Candidate {
    source: &'static str,
    state: ZoneState,
}

/// The newest state a store can give that is not after `max_tick` (the journal's end, when there
/// is a journal): its latest chain with the diffs past `max_tick` left out, or, when even its
/// newest full is past it, the newest full that is not (a crash right after a snapshot leaves the
/// journal up to 100 ms behind the snapshot stores).
async fn chain_up_to(store: &dyn SnapshotStore, max_tick: Option<u64>) -> Result<Option<Chain>, StoreError> {
    let Some(mut chain) = store.latest_chain().await? else {
        return Ok(None);
    };
    let Some(max) = max_tick else { return Ok(Some(chain)) };
    chain.diffs.retain(|d| decode_meta(d).map_or(true, |m| m.tick <= max));
    match decode_meta(&chain.full) {
        Ok(m) if m.tick <= max => return Ok(Some(chain)),
        Err(_) => return Ok(Some(chain)), // let `recover` report the damage
        Ok(m) => tracing::info!(
            source = store.name(),
            full_tick = m.tick,
            journal_end = max,
            "recovery: newest full is ahead of the journal; looking for an older one"
        ),
    }
    for entry in store.list().await? {
        if entry.meta.kind == SnapshotKind::Full && entry.meta.tick <= max {
            return Ok(Some(Chain {
                full: store.get(&entry.key).await?,
                diffs: Vec::new(),
            }));
        }
    }
    Ok(None)
}

/// Reads every store's newest usable chain; returns the candidates (in preference order).
fn candidates(loaded: &LoadedZone, seed: u64, pcfg: &PersistConfig, max_tick: Option<u64>) -> Vec<Candidate> {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "recovery: cannot start a runtime to read stores");
            return Vec::new();
        }
    };
    let digest = loaded.spec.digest;
    rt.block_on(async {
        let mut out = Vec::new();
        let mut consider = |source: &'static str, chain: Result<Option<Chain>, StoreError>| match chain {
            Err(e) => tracing::warn!(source, error = %e, "recovery: store unreadable; skipping it"),
            Ok(None) => tracing::info!(source, "recovery: no snapshot in this store"),
            Ok(Some(c)) => match recover(&c.full, &c.diffs, &digest) {
                Err(e) => tracing::warn!(source, error = %e, "recovery: newest snapshot does not verify; skipping this store"),
                Ok(r) if r.state.seed != seed => {
                    tracing::warn!(
                        source,
                        snapshot_seed = r.state.seed,
                        seed,
                        "recovery: snapshot is for another seed; skipping"
                    )
                }
                Ok(r) => {
                    for (i, e) in &r.skipped {
                        tracing::warn!(source, diff = i, error = %e, "recovery: a newer diff is damaged; using an older one");
                    }
                    tracing::info!(
                        source,
                        full_tick = r.full.tick,
                        diff_tick = r.diff.map(|d| d.tick),
                        tick = r.state.tick,
                        "recovery: snapshot verifies"
                    );
                    out.push(Candidate { source, state: r.state });
                }
            },
        };
        if let Some(url) = &pcfg.redis {
            let chain = match RedisStore::connect(url, &pcfg.instance, pcfg.redis_ttl, pcfg.op_timeout).await {
                Ok(s) => chain_up_to(&s, max_tick).await,
                Err(e) => Err(e),
            };
            consider("redis", chain);
        }
        if let Some(url) = &pcfg.postgres {
            let chain = match PostgresStore::connect(url, &pcfg.instance, pcfg.keep_full, pcfg.op_timeout).await {
                Ok(s) => chain_up_to(&s, max_tick).await,
                Err(e) => Err(e),
            };
            consider("postgres", chain);
        }
        match FileStore::new(pcfg.data_dir.join("snapshots"), pcfg.keep_full) {
            Ok(s) => consider("file", chain_up_to(&s, max_tick).await),
            Err(e) => consider("file", Err(e)),
        }
        out
    })
}

/// What recovery needs from the journal: its last tick, the length of its whole records, and the
/// hashes it recorded (to tie snapshots to its timeline).
struct Extent {
    end: u64,
    valid_len: u64,
    hashes: std::collections::BTreeMap<u64, zone_sim::ZoneHash>,
}

/// Reads the journal through, after checking it belongs here.
fn journal_extent(path: &Path, loaded: &LoadedZone, seed: u64) -> anyhow::Result<Extent> {
    let mut r = JournalReader::open(path).with_context(|| format!("cannot read journal {}", path.display()))?;
    if r.header().zone_digest != loaded.spec.digest || r.header().seed != seed {
        bail!(
            "journal {} was recorded with another zone file or seed (seed {}); move it away, or run with the zone and seed it was made with",
            path.display(),
            r.header().seed
        );
    }
    let mut last = 0;
    let mut len = r.offset();
    let mut hashes = std::collections::BTreeMap::new();
    while let Some(rec) = r.next_record().with_context(|| format!("journal {} is damaged", path.display()))? {
        last = last.max(match &rec {
            Record::Tick(b) => b.tick,
            Record::Hash(h) | Record::End(h) => h.tick,
        });
        if let Record::Hash(h) | Record::End(h) = rec {
            hashes.insert(h.tick, h);
        }
        len = r.offset();
    }
    if let Some(at) = r.torn_tail_at() {
        tracing::warn!(journal = %path.display(), offset = at, "recovery: the journal ends in a torn record (a crash mid-write); it is cut there");
    }
    Ok(Extent {
        end: last,
        valid_len: len,
        hashes,
    })
}

/// Restores the zone, or returns `None` when there is nothing to restore from.
pub fn restore(
    loaded: &LoadedZone,
    seed: u64,
    journal: Option<&Path>,
    pcfg: &PersistConfig,
    exec: &dyn ShardExecutor,
) -> anyhow::Result<Option<Restored>> {
    let journal = journal.filter(|p| p.exists());
    let extent = match journal {
        Some(p) => Some(journal_extent(p, loaded, seed)?),
        None => None,
    };
    let cands = candidates(loaded, seed, pcfg, extent.as_ref().map(|e| e.end));
    // Newest first; the order of `cands` (hot, cold, file) breaks ties.
    let mut order: Vec<(usize, Candidate)> = cands.into_iter().enumerate().collect();
    order.sort_by_key(|(i, c)| (std::cmp::Reverse(c.state.tick), *i));
    let spec = loaded.spec.clone();
    let mut best: Option<(Zone, &'static str, u64)> = None;
    for (_, c) in order {
        let tick = c.state.tick;
        let source = c.source;
        if extent.as_ref().is_some_and(|e| tick > e.end) {
            tracing::warn!(
                source,
                tick,
                "recovery: snapshot is ahead of the journal; not used (replay could not continue from it)"
            );
            continue;
        }
        let mut z = match Zone::restore(spec.clone(), c.state) {
            Ok(z) => z,
            Err(e) => {
                tracing::warn!(source, tick, error = %e, "recovery: snapshot does not fit this zone; skipping it");
                continue;
            }
        };
        // A snapshot must be on this journal's timeline: the journal recorded the zone's hash at
        // every snapshot tick, and the restored zone must hash the same.
        if let Some(e) = &extent {
            match e.hashes.get(&tick) {
                Some(h) if *h == z.hash(exec) => {}
                Some(_) => {
                    tracing::warn!(
                        source,
                        tick,
                        "recovery: snapshot differs from the journal's hash at its tick (another run's snapshot?); skipping it"
                    );
                    continue;
                }
                None => {
                    tracing::warn!(
                        source,
                        tick,
                        "recovery: the journal has no hash at this snapshot's tick, so it cannot be tied to this journal; skipping it"
                    );
                    continue;
                }
            }
        }
        tracing::info!(source, tick, "recovery: restoring from the newest snapshot that verifies");
        best = Some((z, source, tick));
        break;
    }
    let (mut zone, source, snapshot_tick) = match best {
        Some((z, source, tick)) => (z, source, Some(tick)),
        None if journal.is_some() => {
            tracing::info!("recovery: no usable snapshot; replaying the journal from tick 0");
            (Zone::new(spec, seed)?, "journal", None)
        }
        None => return Ok(None),
    };
    let from = zone.tick();
    if let Some(path) = journal {
        let mut r = JournalReader::open(path)?;
        // A mismatch here means the snapshot and the journal disagree: moving one of them away
        // lets the server start from the other.
        crate::replay::continue_from_journal(&mut zone, &mut r, exec, &mut |_| {})
            .with_context(|| format!("recovery: the journal {} does not continue the restored zone", path.display()))?;
        tracing::info!(journal = %path.display(), from_tick = from, to_tick = zone.tick(), "recovery: journal replayed");
    }
    let replayed = zone.tick() - from;
    Ok(Some(Restored {
        zone,
        source,
        snapshot_tick,
        replayed_ticks: replayed,
        journal_valid_len: extent.map(|e| e.valid_len),
    }))
}

/// The one line recovery prints on stdout.
pub fn restored_line(tick: u64, hash: &str, source: &str, rto: Duration) -> String {
    format!("restored_tick={tick} zone_hash={hash} source={source} rto_ms={}", rto.as_millis())
}
