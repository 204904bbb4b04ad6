//! The counting loop: every interval, sample the kernel's maps, fold the
//! sample into the run's tables, detect events (outages, one-way peers,
//! devices that went or came back), and hand the interval to every sink.
//! At the end, one last sample and the summary.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};
use vxtrace_common::{HANDSHAKE_OUT, HandshakeEvent};

use super::{
    churn::DeviceWatch,
    plan::Plan,
    summary::{self, RunFacts},
    tables::Tables,
    visibility::Counts,
};
use crate::{
    discovery::{self, Snapshot},
    netstat,
    probes::{Readout, Tracer},
    reaper::Reaper,
    schema::{DoctorFinding, Line, Node, Probes},
    sinks::{IntervalView, Sinks, SummaryView},
};

/// One read of the kernel, with what came with it.
struct Sample {
    readout: Readout,
    /// Length of the interval it closes.
    seconds: f64,
    read_ms: f64,
    handshakes: Vec<HandshakeEvent>,
}

/// A running `watch`, from the first interval to the summary.
pub struct Session {
    run: SessionStart,
    devices: DeviceWatch,
    start: Instant,
    last_tick: Instant,
}

/// Everything a session starts from.
pub struct SessionStart {
    pub tracer: Tracer,
    pub tables: Tables,
    pub plan: Plan,
    pub snap: Snapshot,
    pub reaper: Option<Reaper>,
    pub probes: Probes,
    pub doctor: Vec<DoctorFinding>,
    pub node: Node,
    pub interval: Duration,
    pub syn_timeout: Duration,
    /// Counters the summary reports as deltas, read before the "attached"
    /// line: whatever a caller does once it sees that line is counted.
    pub netstat: netstat::Baseline,
}

impl Session {
    pub fn new(run: SessionStart) -> Self {
        let now = Instant::now();
        Self {
            devices: DeviceWatch::new(&run.plan, &run.snap),
            run,
            start: now,
            last_tick: now,
        }
    }

    /// Counts until `duration` is over, or Ctrl-C, or SIGTERM.
    pub async fn run(&mut self, sinks: &mut Sinks, duration: Option<Duration>) -> Result<()> {
        let period = self.run.interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = duration.map(|d| tokio::time::Instant::now() + d);
        let mut sigint =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut sigterm =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        loop {
            let until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ticker.tick() => {
                    self.tick(sinks).await?;
                    if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                        return Ok(());
                    }
                }
                _ = until_deadline => return Ok(()),
                _ = sigint.recv() => return Ok(()),
                _ = sigterm.recv() => return Ok(()),
            }
        }
    }

    /// One interval: sample, fold, detect, emit.
    async fn tick(&mut self, sinks: &mut Sinks) -> Result<()> {
        let sample = self.sample()?;
        let drop_deltas = self.run.tables.fold(&sample.readout, sample.seconds);
        let mut events = self.detect(&sample);
        events.extend(self.follow_devices().await?);
        let elapsed = self.start.elapsed().as_secs_f64();
        let line = Line::Interval(Box::new(self.run.tables.interval_line(
            elapsed,
            sample.seconds,
            &drop_deltas,
            sample.read_ms,
        )));
        sinks.interval(&IntervalView {
            line: &line,
            events: &events,
            tables: &self.run.tables,
            drop_deltas: &drop_deltas,
            handshakes: &sample.handshakes,
        })
    }

    /// Reads the kernel: the maps, completed handshakes, and handshakes
    /// that waited too long for their SYN-ACK.
    fn sample(&mut self) -> Result<Sample> {
        let now = Instant::now();
        let seconds = now.duration_since(self.last_tick).as_secs_f64();
        self.last_tick = now;
        self.run.tracer.drain_logs();
        let handshakes = self.run.tracer.drain_handshakes();
        for h in &handshakes {
            self.run
                .tables
                .peers
                .record_handshake(&h.peer, h.latency_ns);
        }
        match self.run.tracer.expire_handshakes(self.run.syn_timeout) {
            Ok(expired) => {
                for h in expired {
                    let outgoing = h.direction == HANDSHAKE_OUT;
                    self.run.tables.peers.record_unanswered(&h.peer, outgoing);
                }
            }
            Err(e) => log::warn!("scanning open handshakes failed: {e:#}"),
        }
        let read_started = Instant::now();
        let readout = self.run.tracer.read()?;
        Ok(Sample {
            readout,
            seconds,
            read_ms: read_started.elapsed().as_secs_f64() * 1000.0,
            handshakes,
        })
    }

    /// Outages and one-way peers, from this interval's packets.
    fn detect(&mut self, sample: &Sample) -> Vec<Line> {
        let elapsed = self.start.elapsed().as_secs_f64();
        let t = &mut self.run.tables;
        let packets = t
            .peers
            .interval_packets
            .iter()
            .map(|(k, addr, n)| (*k, *addr, n.tx_encap, n.rx_nic));
        t.outages.update(elapsed, sample.seconds, packets)
    }

    /// Devices that went away or came back; their clsact filters (if any)
    /// handed to the watchdog.
    async fn follow_devices(&mut self) -> Result<Vec<Line>> {
        let Some((events, fresh)) = self
            .devices
            .refresh(&mut self.run.tracer, &mut self.run.plan)
            .await
        else {
            return Ok(Vec::new());
        };
        let mut events = events;
        events.extend(self.look_for_blind_spots(&fresh));
        for e in &events {
            if let Some(words) = crate::sinks::events::describe(e) {
                eprintln!("vxtrace: {words}");
            }
        }
        // Filters of re-attached devices, and filters that moved back to
        // the head of a chain, must be cleaned up after a SIGKILL too.
        hand_filters_to_watchdog(&mut self.run.reaper, &self.run.tracer)?;
        self.run.tables.unresolved = fresh.unresolved_subnets();
        self.run.snap = fresh;
        Ok(events)
    }

    /// Programs attached ahead of vxtrace, XDP programs, and devices where
    /// the kernel counted packets vxtrace did not see (`visibility`).
    fn look_for_blind_spots(&mut self, fresh: &Snapshot) -> Vec<Line> {
        let t = &mut self.run.tables;
        let mut spots = t.visibility.record(self.run.tracer.keep_first());
        spots.extend(t.visibility.check_xdp(&self.run.plan, fresh));
        if let Some(counts) = Counts::take(&self.run.plan, fresh, &t.peers, &t.global) {
            spots.extend(t.visibility.check_counts(&self.run.plan, counts));
        }
        spots.into_iter().map(Line::BlindSpot).collect()
    }

    /// The last sample, then the summary to every sink. The programs are
    /// detached before anything is printed: nothing of ours stays in the
    /// kernel a moment longer than needed.
    pub async fn finish(mut self, sinks: &mut Sinks) -> Result<()> {
        let sample = self.sample()?;
        // A short remainder adds to the totals but not to the rate
        // histograms.
        let seconds = if sample.seconds >= self.run.interval.as_secs_f64() / 2.0 {
            sample.seconds
        } else {
            0.0
        };
        self.run.tables.fold(&sample.readout, seconds);
        let facts = RunFacts {
            duration_s: self.start.elapsed().as_secs_f64(),
            interval_s: self.run.interval.as_secs_f64(),
            plan: &self.run.plan,
            attached: &self.run.tracer.attachments,
            probes: &self.run.probes,
            doctor: &self.run.doctor,
            node: &self.run.node,
            peer_map_capacity: self.run.tracer.peer_map_entries,
        };
        // Neighbour entries change as traffic flows: the end's are asked for.
        let at_exit = match discovery::snapshot().await {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("reading netlink at exit failed: {e:#}");
                None
            }
        };
        let line = Line::Summary(Box::new(summary::build(
            &self.run.tables,
            &facts,
            &self.run.snap,
            at_exit.as_ref(),
            &self.run.netstat,
        )));
        drop(self.run.tracer);
        if let Some(r) = self.run.reaper.take() {
            r.finish();
        }
        sinks.summary(&SummaryView {
            line: &line,
            tables: &self.run.tables,
        })
    }
}

/// Hands the tracer's clsact filters to the watchdog that removes them
/// after any exit, starting it at the first one.
pub fn hand_filters_to_watchdog(reaper: &mut Option<Reaper>, tracer: &Tracer) -> Result<()> {
    let filters = tracer.clsact_filters();
    if filters.is_empty() {
        return Ok(());
    }
    match reaper.as_mut() {
        Some(r) => r.tell(&filters),
        None => {
            *reaper = Some(Reaper::start(&filters)?);
            Ok(())
        }
    }
}
