//! VTEPs that pod subnets are routed to and that cannot be reached: the
//! state is wrong whatever the traffic, so there is always a finding, with
//! the drops of frames sent to them as evidence.

use super::{About, evidence, fill};
use crate::schema::{Cause, Direction, Finding, MissingEntry, Segment, UnresolvedVtep};

pub const MISSING_FDB_ENTRY: About = About {
    cause: Cause::MissingFdbEntry,
    segment: Segment::SenderHost,
    direction: Direction::ToPeer,
    meaning: "the overlay agent has not programmed the peer's FDB entry, or lost it: frames to its pods have no underlay address to go to",
    fix: "add the entry (`bridge fdb append MAC dev DEV dst <the peer node's address>`) or restart the overlay agent on this node",
};

pub const MISSING_NEIGHBOUR: About = About {
    cause: Cause::MissingNeighbour,
    segment: Segment::SenderHost,
    direction: Direction::ToPeer,
    meaning: "the overlay agent has not programmed the peer's VTEP (neighbour) entry, or lost it: frames to its pods cannot be addressed",
    fix: "add the entry (`ip neigh replace ADDR lladdr <the peer's VTEP MAC> dev DEV nud permanent`) or restart the overlay agent on this node",
};

pub(super) const CAUSES: &[&About] = &[&MISSING_FDB_ENTRY, &MISSING_NEIGHBOUR];

/// The finding for an unreachable VTEP, its fix written for its device,
/// MAC and address.
pub fn diagnose_unresolved(u: &UnresolvedVtep) -> Finding {
    let dropped: u64 = u.drops.values().sum();
    let listed = evidence(&u.drops);
    let subnets = u.subnets.join(", ");
    let mac = u.mac.as_deref().unwrap_or("MAC");
    let (about, what) = match u.missing {
        MissingEntry::FdbEntry => (
            &MISSING_FDB_ENTRY,
            format!("FDB entry for VTEP {} (MAC {mac})", u.vtep),
        ),
        MissingEntry::Neighbour => (
            &MISSING_NEIGHBOUR,
            format!("neighbour entry for VTEP {}", u.vtep),
        ),
    };
    let headline = format!(
        "no {what} on {}: {dropped} frames to {subnets} dropped",
        u.device
    );
    let evidence = if listed.is_empty() {
        format!("routes to {subnets} via {}", u.vtep)
    } else {
        format!("routes to {subnets} via {}; {listed}", u.vtep)
    };
    let mut f = about.finding(headline, evidence);
    let addr = u.vtep.to_string();
    f.fix = fill(
        about.fix,
        &[("MAC", mac), ("DEV", &u.device), ("ADDR", &addr)],
    );
    f
}
