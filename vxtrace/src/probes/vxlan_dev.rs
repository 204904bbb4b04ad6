//! The VXLAN device's TC programs (`vxtrace_vxlan_ingress`,
//! `vxtrace_vxlan_egress`): frames delivered after decapsulation and
//! frames about to be encapsulated, attributed to a peer by MAC; and the
//! inner TCP handshakes they follow (open handshakes in `HANDSHAKES`,
//! completed ones reported through `HANDSHAKE_EVENTS`).

use anyhow::{Context as _, Result};
use aya::maps::HashMap;
use vxtrace_common::{
    FlowKey, Handshake, HandshakeEvent, VniInfo,
    names::{maps, programs},
};

use super::{Tracer, monotonic_ns};
use crate::{discovery::VxlanDevice, schema::Hook};

/// bpf_map_update_elem flag: update only.
const BPF_EXIST: u64 = 2;

/// Whether another watched device (by name: a device that came back has a
/// new ifindex) uses `dev`'s VNI with a different MAC.
pub fn shares_vni(dev: &VxlanDevice, watched: &[VxlanDevice]) -> bool {
    dev.vni.is_some()
        && watched
            .iter()
            .any(|o| o.name != dev.name && o.vni == dev.vni && o.mac != dev.mac)
}

impl Tracer {
    /// Tells the kernel programs about `dev` (its ifindex, VNI, and for a
    /// routed device the MAC decapsulated frames must be addressed to).
    /// `watched`: every watched device. Devices that share a VNI (flannel's
    /// `flannel.1` and `flannel-v6.1` in a dual-stack cluster) share one
    /// entry of the VNI map, which holds one MAC: the check of the inner
    /// destination MAC is then off for that VNI (see [`shares_vni`]).
    pub fn register_vxlan(&mut self, dev: &VxlanDevice, watched: &[VxlanDevice]) -> Result<()> {
        let check_mac = if dev.bridged || shares_vni(dev, watched) {
            None
        } else {
            dev.mac
        };
        // A bridged or learning device replicates what it has no entry for
        // to its flood list, group or default remote; a routed one (flannel,
        // Calico) or a point-to-point tunnel sends each frame to one VTEP.
        let floods = dev.bridged || dev.learning;
        self.register_device(dev.ifindex, dev.vni, check_mac, floods)
    }

    /// Registers `dev` (again: a device that came back has a new ifindex)
    /// and attaches to it.
    pub fn attach_vxlan(&mut self, dev: &VxlanDevice, watched: &[VxlanDevice]) -> Result<()> {
        self.register_vxlan(dev, watched)?;
        self.attach_tc(programs::VXLAN_INGRESS, &dev.name, Hook::Ingress)?;
        self.attach_tc(programs::VXLAN_EGRESS, &dev.name, Hook::Egress)
    }

    /// Tells the kernel programs that `ifindex` is a VXLAN device with `vni`
    /// (`None`: a metadata device, registered under VNI 0 and flagged
    /// [`vxtrace_common::VxlanDevice::METADATA`]: its programs take each
    /// frame's remote from the tunnel metadata).
    /// `own_mac`: the device's MAC, when decapsulated frames must be
    /// addressed to it (routed devices; not bridged ones). `floods`: the
    /// device replicates frames to several VTEPs.
    pub fn register_device(
        &mut self,
        ifindex: u32,
        vni: Option<u32>,
        own_mac: Option<[u8; 6]>,
        floods: bool,
    ) -> Result<()> {
        let mut devices: HashMap<_, u32, vxtrace_common::VxlanDevice> =
            HashMap::try_from(self.map_mut(maps::VXLAN_DEVICES)?)?;
        let device = vxtrace_common::VxlanDevice {
            vni: vni.unwrap_or(0),
            flags: if vni.is_none() {
                vxtrace_common::VxlanDevice::METADATA
            } else {
                0
            },
        };
        devices
            .insert(ifindex, device, 0)
            .context("registering the VXLAN device")?;
        if let Some(vni) = vni {
            let mut by_vni: HashMap<_, u32, VniInfo> =
                HashMap::try_from(self.map_mut(maps::VXLAN_DEVICES_BY_VNI)?)?;
            let info = VniInfo {
                ifindex,
                check_dst_mac: u32::from(own_mac.is_some()),
                mac: own_mac.unwrap_or_default(),
                floods: u8::from(floods),
                _pad: 0,
            };
            by_vni.insert(vni, info, 0).context("registering the VNI")?;
        }
        Ok(())
    }

    /// Completed handshakes reported since the last call.
    pub fn drain_handshakes(&mut self) -> Vec<HandshakeEvent> {
        let mut out = Vec::new();
        if let Some(ring) = self.handshake_events.as_mut() {
            while let Some(item) = ring.next() {
                if item.len() >= std::mem::size_of::<HandshakeEvent>() {
                    // SAFETY: the kernel wrote a HandshakeEvent (repr(C),
                    // Pod) and the item holds at least that many bytes.
                    let ev =
                        unsafe { std::ptr::read_unaligned(item.as_ptr() as *const HandshakeEvent) };
                    out.push(ev);
                }
            }
        }
        out
    }

    /// Removes handshakes whose SYN is older than `timeout` and returns
    /// them: SYNs that never got a SYN-ACK.
    pub fn expire_handshakes(&mut self, timeout: std::time::Duration) -> Result<Vec<Handshake>> {
        let now = monotonic_ns();
        let limit = timeout.as_nanos() as u64;
        let mut map: HashMap<_, FlowKey, Handshake> =
            HashMap::try_from(self.map_mut(maps::HANDSHAKES)?)?;
        let mut expired = Vec::new();
        let mut stale = Vec::new();
        for item in map.iter() {
            let Ok((k, v)) = item else { continue };
            let age = now.saturating_sub(v.first_syn_ns);
            if v.reported == 0 && age > limit {
                expired.push((k, v));
            } else if v.reported != 0 && age > limit.saturating_mul(10) {
                stale.push(k);
            }
        }
        let mut out = Vec::new();
        for (k, mut v) in expired {
            // Keep the entry, marked: retransmitted SYNs of this attempt then
            // count as retransmissions, not as new unanswered handshakes.
            // If a SYN-ACK removed it meanwhile, it was answered after all.
            if map.get(&k, 0).is_ok() {
                v.reported = 1;
                let _ = map.insert(k, v, BPF_EXIST);
                out.push(v);
            }
        }
        for k in stale {
            let _ = map.remove(&k);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, vni: Option<u32>, mac: u8) -> VxlanDevice {
        VxlanDevice {
            mac: Some([0x0e, 0, 0, 0, 0, mac]),
            ..VxlanDevice::for_test(name, u32::from(mac), vni, 8472)
        }
    }

    #[test]
    fn devices_sharing_a_vni() {
        let v4 = dev("flannel.1", Some(1), 1);
        let v6 = dev("flannel-v6.1", Some(1), 2);
        let other = dev("vx42", Some(42), 3);
        assert!(shares_vni(&v4, &[v4.clone(), v6.clone()]));
        assert!(shares_vni(&v6, &[v4.clone(), v6.clone(), other.clone()]));
        assert!(!shares_vni(
            &other,
            &[v4.clone(), v6.clone(), other.clone()]
        ));
        // The same device come back (new ifindex): not another device.
        let back = VxlanDevice {
            ifindex: 9,
            ..v4.clone()
        };
        assert!(!shares_vni(&back, std::slice::from_ref(&v4)));
        // Metadata devices have no VNI of their own.
        let md = dev("vxm", None, 4);
        assert!(!shares_vni(&md, &[md.clone(), dev("vxm2", None, 5)]));
    }
}
