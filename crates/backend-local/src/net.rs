//! Slot networking: a host bridge with NAT, and per slot a network namespace joined by a veth pair.
//!
//! The namespace is created in-process (a short-lived thread `unshare`s `CLONE_NEWNET`); the inside
//! is configured by ONE `ip -batch` process started from that thread (so it runs inside the new
//! namespace), and the host end is attached to the bridge with two ioctls. That is one process spawn
//! per slot.
//!
//! The namespace is kept alive by a bind mount at `<state_dir>/netns/<slot>` made inside a private
//! mount namespace of this process ([`NetnsHolder`]), not in the host's: every bind mount in the
//! host mount namespace lengthens `/proc/self/mountinfo`, which libcontainer's cgroup code reads
//! ~12 times per container create and per exec (measured: +1.1 µs per line per read), so per-slot
//! host mounts made every operation O(slots). Runtimes reach the namespace through
//! [`NetnsHolder::host_path`] (`/proc/<holder thread>/root/...`). The holder namespace lives as long
//! as the backend; after a restart the namespaces of running slots are re-bound from their
//! containers ([`NetnsHolder::adopt`]).

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::error::{LocalError, Result};

/// An IPv4 subnet like `10.213.0.0/16`; the gateway (the bridge) is the first host address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub base: u32,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(s: &str) -> Result<Subnet> {
        let bad = || LocalError::Invalid(format!("subnet {s:?} is not of the form a.b.c.d/len with len 8..=30"));
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = len.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Subnet { base: u32::from(addr) & mask, prefix })
    }
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }
    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v >= self.base && v - self.base < self.size()
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// Allocates slot IPs from a subnet; the allocations themselves are persisted in each `slot.json`
/// and re-registered at start-up, so a restart never hands out a live IP again.
#[derive(Debug)]
pub struct Ipam {
    subnet: Subnet,
    used: BTreeSet<u32>,
}

impl Ipam {
    pub fn new(subnet: Subnet) -> Self {
        Ipam { subnet, used: BTreeSet::new() }
    }
    /// Mark an IP as used (at start-up, from a persisted slot).
    pub fn reserve(&mut self, ip: Ipv4Addr) {
        if self.subnet.contains(ip) {
            self.used.insert(u32::from(ip) - self.subnet.base);
        }
    }
    /// The lowest free host address (never the network, gateway or broadcast address).
    pub fn allocate(&mut self) -> Result<Ipv4Addr> {
        let last = self.subnet.size() - 2;
        let off = (2..=last)
            .find(|o| !self.used.contains(o))
            .ok_or_else(|| LocalError::Network(format!("subnet {} has no free address left", self.subnet)))?;
        self.used.insert(off);
        Ok(Ipv4Addr::from(self.subnet.base + off))
    }
    pub fn release(&mut self, ip: Ipv4Addr) {
        if self.subnet.contains(ip) {
            self.used.remove(&(u32::from(ip) - self.subnet.base));
        }
    }
}

/// The host-side veth name of a slot IP (unique on the host as long as subnets do not overlap).
pub fn veth_name(ip: Ipv4Addr) -> String {
    format!("ab{:08x}", u32::from(ip))
}

/// The MAC address that goes with an IP on the bridge: locally administered unicast `02:ab:` +
/// the four IP bytes. Slot `eth0`s and the bridge itself get theirs from it, so an address never
/// changes its MAC. With random MACs, a slot created on the IP of a just-destroyed slot was
/// unreachable from the host for up to ~50 s: the host's neighbour entry for the IP still pointed
/// at the old slot's MAC (REACHABLE for 15–45 s, then 5 s of DELAY before a probe), so the data
/// plane's SYNs were dropped while the agent listened fine inside. Likewise a bridge without a
/// set address takes the lowest MAC of its ports and changes it when that port goes, which leaves
/// every slot's cached gateway MAC stale.
pub fn mac_of(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("02:ab:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

fn run_ip_batch(cmds: &str, force: bool) -> Result<()> {
    let mut cmd = Command::new("ip");
    if force {
        cmd.arg("-force");
    }
    cmd.args(["-batch", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = crate::runtime::spawn_locked(&mut cmd)
        .map_err(|e| LocalError::Network(format!("cannot run `ip` (install iproute2): {e}")))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(cmds.as_bytes())
        .map_err(|e| LocalError::Network(format!("write to `ip -batch`: {e}")))?;
    let out = child.wait_with_output().map_err(|e| LocalError::Network(format!("wait for `ip`: {e}")))?;
    if !out.status.success() && !force {
        return Err(LocalError::Network(format!(
            "`ip -batch` failed ({}): {}; commands were:\n{cmds}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn iptables(args: &[&str]) -> Result<bool> {
    let mut cmd = Command::new("iptables");
    cmd.arg("-w").args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = crate::runtime::spawn_locked(&mut cmd)
        .and_then(|c| c.wait_with_output())
        .map_err(|e| LocalError::Network(format!("cannot run `iptables` (install iptables): {e}")))?;
    Ok(out.status.success())
}

/// Add an iptables rule unless it is already there (`-C` before `-A`/`-I`).
fn iptables_ensure(table: &str, chain: &str, insert: bool, rule: &[&str]) -> Result<()> {
    let mut check = vec!["-t", table, "-C", chain];
    check.extend_from_slice(rule);
    if iptables(&check)? {
        return Ok(());
    }
    let mut add = vec!["-t", table, if insert { "-I" } else { "-A" }, chain];
    add.extend_from_slice(rule);
    if iptables(&add)? { Ok(()) } else { Err(LocalError::Network(format!("iptables {} failed", add.join(" ")))) }
}

/// Delete every copy of an iptables rule (idempotent).
fn iptables_remove(table: &str, chain: &str, rule: &[&str]) -> Result<()> {
    let mut del = vec!["-t", table, "-D", chain];
    del.extend_from_slice(rule);
    for _ in 0..16 {
        if !iptables(&del)? {
            break;
        }
    }
    Ok(())
}

fn host_iface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Create the bridge with the gateway address, enable forwarding and NAT. Idempotent.
pub fn ensure_host_network(bridge: &str, subnet: Subnet) -> Result<()> {
    if bridge.is_empty() || bridge.len() > 15 {
        return Err(LocalError::Invalid(format!("bridge name {bridge:?} must have 1 to 15 characters")));
    }
    let mut cmds = String::new();
    if !host_iface_exists(bridge) {
        cmds.push_str(&format!("link add name {bridge} type bridge\n"));
    }
    // A set address stays put when ports come and go (see `mac_of`).
    cmds.push_str(&format!(
        "link set {bridge} address {mac}\naddr replace {gw}/{prefix} dev {bridge}\nlink set {bridge} up\n",
        mac = mac_of(subnet.gateway()),
        gw = subnet.gateway(),
        prefix = subnet.prefix
    ));
    // -force: a concurrent creator may have won the race for `link add`; checked right below.
    run_ip_batch(&cmds, true)?;
    if !host_iface_exists(bridge) {
        return Err(LocalError::Network(format!("bridge {bridge} could not be created")));
    }
    if std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").map(|s| s.trim() != "1").unwrap_or(true) {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| LocalError::Network(format!("enable net.ipv4.ip_forward: {e}")))?;
    }
    let sub = subnet.to_string();
    iptables_ensure("nat", "POSTROUTING", false, &["-s", &sub, "!", "-o", bridge, "-j", "MASQUERADE"])?;
    iptables_ensure("filter", "FORWARD", false, &["-i", bridge, "-j", "ACCEPT"])?;
    iptables_ensure("filter", "FORWARD", false, &["-o", bridge, "-j", "ACCEPT"])?;
    Ok(())
}

/// Undo [`ensure_host_network`]: the NAT/forward rules and the bridge (tests; an operator's cleanup).
pub fn remove_host_network(bridge: &str, subnet: Subnet) -> Result<()> {
    let sub = subnet.to_string();
    iptables_remove("nat", "POSTROUTING", &["-s", &sub, "!", "-o", bridge, "-j", "MASQUERADE"])?;
    iptables_remove("filter", "FORWARD", &["-i", bridge, "-j", "ACCEPT"])?;
    iptables_remove("filter", "FORWARD", &["-o", bridge, "-j", "ACCEPT"])?;
    if host_iface_exists(bridge) {
        run_ip_batch(&format!("link del {bridge}\n"), false)?;
    }
    Ok(())
}

/// Block (or unblock) forwarding from a slot IP; the host can still reach the slot.
pub fn set_egress(ip: Ipv4Addr, allowed: bool) -> Result<()> {
    let src = format!("{ip}/32");
    let rule = ["-s", src.as_str(), "-j", "DROP"];
    if allowed {
        iptables_remove("filter", "FORWARD", &rule)
    } else {
        iptables_ensure("filter", "FORWARD", true, &rule)
    }
}

/// A private mount namespace, entered by one parked thread of this process, that holds the slots'
/// netns bind mounts (see the module docs). Dropping it ends the thread; the namespace (and every
/// network namespace only it kept alive) goes away once no thread of ours is inside.
pub struct NetnsHolder {
    tid: i32,
    ns: OwnedFd,
    _stop: mpsc::Sender<()>,
}

impl std::fmt::Debug for NetnsHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetnsHolder").field("tid", &self.tid).finish_non_exhaustive()
    }
}

impl NetnsHolder {
    /// Create the namespace (a private copy of the host's, pruned to `/`, `/proc` and the mounts
    /// `netns_dir` lives on, so it pins no other host filesystem) and park a thread in it.
    pub fn start(netns_dir: &Path) -> Result<NetnsHolder> {
        let (tx, rx) = mpsc::channel::<Result<i32>>();
        let (stop, stopped) = mpsc::channel::<()>();
        let keep = std::path::absolute(netns_dir).map_err(LocalError::io("resolve the netns dir"))?;
        std::thread::Builder::new()
            .name("agentbox-netns".into())
            .spawn(move || {
                let r = (|| -> Result<i32> {
                    nix::sched::unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS)
                        .map_err(LocalError::sys("unshare(CLONE_NEWNS)"))?;
                    nix::mount::mount(
                        None::<&str>,
                        "/",
                        None::<&str>,
                        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                        None::<&str>,
                    )
                    .map_err(LocalError::sys("mount(/, rprivate)"))?;
                    prune_mounts(&keep);
                    Ok(nix::unistd::gettid().as_raw())
                })();
                let ok = r.is_ok();
                let _ = tx.send(r);
                if ok {
                    // Parked until the holder is dropped (the sender side disconnects).
                    let _ = stopped.recv();
                }
            })
            .map_err(LocalError::io("spawn the netns holder thread"))?;
        let tid = rx.recv().map_err(|_| LocalError::Network("the netns holder thread died".into()))??;
        let ns = std::fs::File::open(format!("/proc/{tid}/ns/mnt"))
            .map_err(LocalError::io("open the holder mount namespace"))?;
        Ok(NetnsHolder { tid, ns: OwnedFd::from(ns), _stop: stop })
    }

    /// Where a process in the host mount namespace (a runtime) finds the bind mount at `netns`.
    pub fn host_path(&self, netns: &Path) -> PathBuf {
        let abs = std::path::absolute(netns).unwrap_or_else(|_| netns.to_path_buf());
        Path::new(&format!("/proc/{}/root", self.tid)).join(abs.strip_prefix("/").unwrap_or(&abs))
    }

    /// Mount points at or below `dir` inside the holder namespace, deepest first.
    pub fn mounts_under(&self, dir: &Path) -> Vec<PathBuf> {
        mount_points(&format!("/proc/{}/mountinfo", self.tid), dir)
    }

    /// Run `f` on a fresh thread inside the holder namespace.
    fn run_inside<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter()?;
                f()
            })
            .join()
            .map_err(|_| LocalError::Network("netns holder task panicked".into()))?
        })
    }

    /// Move the calling thread into the holder namespace (it gets its own fs context first).
    fn enter(&self) -> Result<()> {
        nix::sched::unshare(CloneFlags::CLONE_FS).map_err(LocalError::sys("unshare(CLONE_FS)"))?;
        nix::sched::setns(&self.ns, CloneFlags::CLONE_NEWNS).map_err(LocalError::sys("setns(holder mount namespace)"))
    }

    /// Keep the network namespace of running process `pid` at `netns` (re-adopting a slot after a
    /// restart). Idempotent.
    pub fn adopt(&self, netns: &Path, pid: i32) -> Result<()> {
        if !self.mounts_under(netns).is_empty() {
            return Ok(());
        }
        let target = netns.to_path_buf();
        self.run_inside(move || {
            if !target.exists() {
                std::fs::File::create(&target).map_err(LocalError::io(format!("create {}", target.display())))?;
            }
            let src = format!("/proc/{pid}/ns/net");
            nix::mount::mount(Some(src.as_str()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(LocalError::sys("mount(netns bind)"))
        })
    }
}

/// Lazily unmount, in the calling thread's (private) mount namespace, everything but `/`, `/proc`
/// and the mounts that `keep` is on.
fn prune_mounts(keep: &Path) {
    for mp in mount_points("/proc/thread-self/mountinfo", Path::new("/")) {
        if mp == Path::new("/") || mp == Path::new("/proc") || keep.starts_with(&mp) {
            continue;
        }
        let _ = nix::mount::umount2(&mp, MntFlags::MNT_DETACH);
    }
}

/// Mount points at or below `dir` listed in a mountinfo file, deepest first.
pub fn mount_points(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string(mountinfo) else { return vec![] };
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mp| PathBuf::from(mp.replace("\\040", " ")))
        .filter(|mp| mp.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// What one slot network looks like.
#[derive(Debug, Clone)]
pub struct SlotNet<'a> {
    pub holder: &'a NetnsHolder,
    pub netns: &'a Path,
    pub ip: Ipv4Addr,
    pub subnet: Subnet,
    pub veth: &'a str,
    pub bridge: &'a str,
}

/// Create the slot's netns (bind-mounted at `netns`), its veth pair and addresses.
/// On error everything created so far is removed again.
pub fn create_slot_net(n: &SlotNet<'_>) -> Result<()> {
    if host_iface_exists(n.veth) {
        // Left over from a crash with the same IP: the IP is free now, so is the name.
        let _ = run_ip_batch(&format!("link del {}\n", n.veth), false);
    }
    let res = create_slot_net_inner(n);
    if res.is_err() {
        let _ = destroy_slot_net(n.holder, n.netns, n.veth);
    }
    res
}

fn create_slot_net_inner(n: &SlotNet<'_>) -> Result<()> {
    if let Some(dir) = n.netns.parent() {
        std::fs::create_dir_all(dir).map_err(LocalError::io(format!("create {}", dir.display())))?;
    }
    std::fs::File::create(n.netns).map_err(LocalError::io(format!("create {}", n.netns.display())))?;
    let host_pid = std::process::id();
    let batch = format!(
        "link set lo up\nlink add eth0 address {mac} type veth peer name {veth} netns {host_pid}\naddr add {ip}/{prefix} dev eth0\nlink set eth0 up\nroute add default via {gw}\n",
        mac = mac_of(n.ip),
        veth = n.veth,
        ip = n.ip,
        prefix = n.subnet.prefix,
        gw = n.subnet.gateway()
    );
    let target = n.netns;
    let holder = n.holder;
    // The namespace switches only affect this short-lived thread, and the `ip` it starts inherits
    // them. The bind mount comes first (so a failure leaves nothing running in an unreachable
    // namespace) and is made in the holder's mount namespace, `ip` then runs in the host's.
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(LocalError::sys("unshare(CLONE_NEWNET)"))?;
            let host_mnt = std::fs::File::open("/proc/thread-self/ns/mnt")
                .map_err(LocalError::io("open the host mount namespace"))?;
            holder.enter()?;
            nix::mount::mount(Some("/proc/thread-self/ns/net"), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(LocalError::sys("mount(netns bind)"))?;
            nix::sched::setns(&host_mnt, CloneFlags::CLONE_NEWNS)
                .map_err(LocalError::sys("setns(host mount namespace)"))?;
            run_ip_batch(&batch, false)
        })
        .join()
        .map_err(|_| LocalError::Network("netns setup thread panicked".into()))?
    })?;
    attach_to_bridge(n.veth, n.bridge)
}

fn umount_netns(netns: &Path) -> Result<()> {
    match nix::mount::umount2(netns, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(LocalError::Sys { call: "umount2(netns)", errno: e }),
    }
}

/// Remove the slot's veth and network namespace. Idempotent.
pub fn destroy_slot_net(holder: &NetnsHolder, netns: &Path, veth: &str) -> Result<()> {
    if host_iface_exists(veth) {
        run_ip_batch(&format!("link del {veth}\n"), false)?;
    }
    // Unconditionally (no mountinfo scan: the holder's table has one line per slot).
    let target = netns.to_path_buf();
    holder.run_inside(move || umount_netns(&target))?;
    // A bind in the host namespace, made by versions before the holder existed.
    umount_netns(netns)?;
    match std::fs::remove_file(netns) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LocalError::io(format!("remove {}", netns.display()))(e)),
    }
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Result<IfReq> {
        let mut r = IfReq { name: [0; 16], data: [0; 24] };
        if name.len() > 15 {
            return Err(LocalError::Invalid(format!("interface name {name} is too long")));
        }
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        Ok(r)
    }
}

const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
const SIOCGIFINDEX: libc::c_ulong = 0x8933;
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

fn ioctl(fd: &std::os::fd::OwnedFd, req: libc::c_ulong, r: &mut IfReq, what: &'static str) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `r` is a valid, exclusively borrowed ifreq-sized buffer (16-byte name + 24-byte
    // union) for the whole call, and the requests used here read/write only within it.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req, r as *mut IfReq) };
    if rc < 0 { Err(LocalError::Sys { call: what, errno: nix::errno::Errno::last() }) } else { Ok(()) }
}

/// `ip link set <veth> master <bridge> up`, as two ioctls on an inet socket.
fn attach_to_bridge(veth: &str, bridge: &str) -> Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let fd = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .map_err(LocalError::sys("socket(AF_INET)"))?;
    let mut r = IfReq::new(veth)?;
    ioctl(&fd, SIOCGIFINDEX, &mut r, "ioctl(SIOCGIFINDEX)")?;
    let ifindex = i32::from_ne_bytes(r.data[..4].try_into().expect("4 bytes"));
    let mut b = IfReq::new(bridge)?;
    b.data[..4].copy_from_slice(&ifindex.to_ne_bytes());
    ioctl(&fd, SIOCBRADDIF, &mut b, "ioctl(SIOCBRADDIF)")?;
    let mut f = IfReq::new(veth)?;
    ioctl(&fd, SIOCGIFFLAGS, &mut f, "ioctl(SIOCGIFFLAGS)")?;
    let flags = i16::from_ne_bytes([f.data[0], f.data[1]]) | libc::IFF_UP as i16;
    f.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl(&fd, SIOCSIFFLAGS, &mut f, "ioctl(SIOCSIFFLAGS)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_and_ipam() {
        let s = Subnet::parse("10.213.7.9/16").unwrap();
        assert_eq!(s.to_string(), "10.213.0.0/16");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 213, 0, 1));
        let mut ipam = Ipam::new(Subnet::parse("10.9.0.0/30").unwrap());
        // /30: network .0, gateway .1, one host .2, broadcast .3
        assert_eq!(ipam.allocate().unwrap(), Ipv4Addr::new(10, 9, 0, 2));
        assert!(ipam.allocate().is_err());
        ipam.release(Ipv4Addr::new(10, 9, 0, 2));
        ipam.reserve(Ipv4Addr::new(10, 9, 0, 2));
        assert!(ipam.allocate().is_err());
        assert!(Subnet::parse("10.0.0.0").is_err());
        assert!(Subnet::parse("10.0.0.0/31").is_err());
        assert_eq!(veth_name(Ipv4Addr::new(10, 213, 0, 2)), "ab0ad50002");
        assert_eq!(mac_of(Ipv4Addr::new(10, 213, 0, 2)), "02:ab:0a:d5:00:02");
        assert_ne!(mac_of(s.gateway()), mac_of(Ipv4Addr::new(10, 213, 0, 2)));
    }
}
