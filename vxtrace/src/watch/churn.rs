//! Devices that disappear and come back (an overlay agent restarting
//! deletes and recreates its VXLAN device, with a new ifindex): seen
//! through netlink about once a second, re-attached, and reported as
//! events; and FDB entries of peers that joined meanwhile, seeded.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::plan::Plan;
use crate::{
    discovery::{self, Snapshot},
    probes::Tracer,
    schema::{DeviceChange, Line},
};

/// How often netlink is asked.
const REFRESH: Duration = Duration::from_millis(900);

/// The watched devices' ifindex as last seen (`None`: gone).
pub struct DeviceWatch {
    known: HashMap<String, Option<u32>>,
    last_refresh: Instant,
}

impl DeviceWatch {
    pub fn new(plan: &Plan, snap: &Snapshot) -> Self {
        let known = plan
            .vxlan
            .iter()
            .map(|d| (d.name.clone(), Some(d.ifindex)))
            .chain(
                plan.underlays
                    .iter()
                    .map(|u| (u.clone(), snap.link_by_name(u).map(|l| l.ifindex))),
            )
            .collect();
        Self {
            known,
            last_refresh: Instant::now(),
        }
    }

    /// When a refresh is due: a new snapshot, devices re-attached, new FDB
    /// entries seeded; returns the events and the snapshot.
    pub async fn refresh(
        &mut self,
        tracer: &mut Tracer,
        plan: &mut Plan,
    ) -> Option<(Vec<Line>, Snapshot)> {
        if self.last_refresh.elapsed() < REFRESH {
            return None;
        }
        self.last_refresh = Instant::now();
        let fresh = match discovery::snapshot().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("refreshing the devices and the FDB failed: {e:#}");
                return None;
            }
        };
        let mut events = self.vxlan_devices(tracer, plan, &fresh);
        events.extend(self.underlays(tracer, plan, &fresh));
        events.extend(self.new_underlays(tracer, plan, &fresh));
        // New peers join the FDB while we run, hosts move between them;
        // keep attribution current.
        match tracer.seed_from(&fresh, &plan.vxlan) {
            Ok((_, moved)) => events.extend(moved.into_iter().map(Line::MacMoved)),
            Err(e) => log::warn!("seeding new FDB entries failed: {e:#}"),
        }
        Some((events, fresh))
    }

    fn vxlan_devices(
        &mut self,
        tracer: &mut Tracer,
        plan: &mut Plan,
        snap: &Snapshot,
    ) -> Vec<Line> {
        let mut events = Vec::new();
        let current = snap.vxlan_devices();
        let watched = plan.vxlan.clone();
        for dev in plan.vxlan.iter_mut() {
            let was = self.known.get(&dev.name).copied().flatten();
            match current.iter().find(|d| d.name == dev.name) {
                Some(d) if Some(d.ifindex) != was => {
                    let result = tracer.attach_vxlan(d, &watched);
                    events.push(self.came_back("VXLAN device", &d.name, d.ifindex, result));
                    *dev = d.clone();
                }
                None if was.is_some() => events.push(self.gone("VXLAN device", &dev.name)),
                _ => {}
            }
        }
        events
    }

    fn underlays(&mut self, tracer: &mut Tracer, plan: &Plan, snap: &Snapshot) -> Vec<Line> {
        let mut events = Vec::new();
        for name in &plan.underlays {
            let was = self.known.get(name).copied().flatten();
            match snap.link_by_name(name) {
                Some(l) if Some(l.ifindex) != was => {
                    let result = tracer.attach_underlay(name);
                    events.push(self.came_back("underlay device", name, l.ifindex, result));
                }
                None if was.is_some() => events.push(self.gone("underlay device", name)),
                _ => {}
            }
        }
        events
    }

    /// Devices that carry the overlay now and did not at start (an uplink
    /// that came up, a route moved to another NIC): watched from now on.
    /// Devices no longer used stay watched (they may come back).
    fn new_underlays(
        &mut self,
        tracer: &mut Tracer,
        plan: &mut Plan,
        snap: &Snapshot,
    ) -> Vec<Line> {
        if plan.underlays_named {
            return Vec::new();
        }
        let mut events = Vec::new();
        for name in super::plan::current_underlays(snap, &plan.vxlan) {
            if plan.underlays.contains(&name) {
                continue;
            }
            let ifindex = snap.link_by_name(&name).map(|l| l.ifindex);
            plan.underlays.push(name.clone());
            plan.underlays.sort();
            match tracer.attach_underlay(&name) {
                Ok(()) => {
                    self.known.insert(name.clone(), ifindex);
                    events.push(Line::DeviceAdded(DeviceChange {
                        device: name.clone(),
                        ifindex,
                        message: format!(
                            "underlay device {name} now carries the overlay's traffic (a route to a peer goes through it): watching it"
                        ),
                    }));
                }
                Err(e) => events.push(Line::DeviceError(DeviceChange {
                    device: name.clone(),
                    ifindex,
                    message: format!(
                        "{name} now carries the overlay's traffic but attaching to it failed: {e:#}; its packets are not counted (name it with --iface)"
                    ),
                })),
            }
        }
        events
    }

    fn came_back(&mut self, what: &str, name: &str, ifindex: u32, attached: Result<()>) -> Line {
        match attached {
            Ok(()) => {
                self.known.insert(name.to_string(), Some(ifindex));
                Line::DeviceReattached(DeviceChange {
                    device: name.to_string(),
                    ifindex: Some(ifindex),
                    message: format!("{what} {name} is back (ifindex {ifindex}): re-attached"),
                })
            }
            Err(e) => Line::DeviceError(DeviceChange {
                device: name.to_string(),
                ifindex: Some(ifindex),
                message: format!("re-attaching to {name} failed: {e:#}"),
            }),
        }
    }

    fn gone(&mut self, what: &str, name: &str) -> Line {
        self.known.insert(name.to_string(), None);
        Line::DeviceGone(DeviceChange {
            device: name.to_string(),
            ifindex: None,
            message: format!("{what} {name} disappeared; waiting for it to come back"),
        })
    }
}
