//! Hosts of a test's own on one machine: a Linux bridge in this (the root)
//! network namespace and one network namespace per host, joined to it by a
//! veth pair, each with an address of one /24 (`ip netns`, `ip link`; needs
//! root). What runs in this namespace (the broker, PostgreSQL, the test's
//! clients) is reached at [`Net::root_ip`]. A host's links are cut with
//! iptables inside its namespace: packets dropped, not refused, in both
//! directions, until [`Host::restore`]. Everything is removed on drop.

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A bridge and the hosts on it.
pub struct Net {
    /// `cfb<n>`: the bridge, and the prefix of every name.
    name: String,
    /// The third octet of `10.213.<subnet>.0/24`.
    subnet: u8,
    hosts: Vec<String>,
}

/// One network namespace on a [`Net`].
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name (for `ip netns exec`).
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// Runs a command; an error with its output if it fails.
fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("run {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Net {
    /// A new bridge with this namespace at `.1` of a /24 of its own.
    pub fn create() -> Result<Net> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = (std::process::id() % 1000) * 10 + NEXT.fetch_add(1, Ordering::Relaxed) % 10;
        let net = Net {
            name: format!("cfb{n}"),
            subnet: (n % 250) as u8 + 1,
            hosts: Vec::new(),
        };
        run(&["ip", "link", "add", &net.name, "type", "bridge"])
            .context("create a bridge (the network tests need root and iproute2)")?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", net.root_ip()),
            "dev",
            &net.name,
        ])?;
        run(&["ip", "link", "set", &net.name, "up"])?;
        Ok(net)
    }

    /// This namespace's address on the bridge.
    pub fn root_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 1)
    }

    /// A new namespace on the bridge, at the next address.
    pub fn host(&mut self) -> Result<Host> {
        let i = self.hosts.len() + 1;
        let ns = format!("{}h{i}", self.name);
        let ip = Ipv4Addr::new(10, 213, self.subnet, 10 + i as u8);
        let (outside, inside) = (format!("{}o{i}", self.name), format!("{}i{i}", self.name));
        run(&["ip", "netns", "add", &ns])?;
        self.hosts.push(ns.clone());
        run(&[
            "ip", "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ])?;
        run(&["ip", "link", "set", &inside, "netns", &ns])?;
        run(&["ip", "link", "set", &outside, "master", &self.name])?;
        run(&["ip", "link", "set", &outside, "up"])?;
        let exec = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", &ns];
            all.extend_from_slice(args);
            run(&all)
        };
        exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &inside])?;
        exec(&["ip", "link", "set", &inside, "up"])?;
        exec(&["ip", "link", "set", "lo", "up"])?;
        exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &self.root_ip().to_string(),
        ])?;
        Ok(Host { ns, ip })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.hosts {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        let _ = run(&["ip", "link", "del", &self.name]);
    }
}

/// Which end of a TCP connection a port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The peer listens on it: this host connects to `peer:port`.
    Theirs(u16),
    /// This host listens on it: the peer connects to `host:port`.
    Ours(u16),
}

impl Host {
    /// Runs `args` in this host's namespace.
    fn exec(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["ip", "netns", "exec", &self.ns];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Drops every packet between this host and `peer` on `port`, both
    /// ways, until [`Host::restore`].
    pub fn cut(&self, peer: Ipv4Addr, port: Port) -> Result<()> {
        let peer = peer.to_string();
        let (out_port, in_port, number) = match port {
            Port::Theirs(p) => ("--dport", "--sport", p),
            Port::Ours(p) => ("--sport", "--dport", p),
        };
        let number = number.to_string();
        for (chain, addr, flag) in [("OUTPUT", "-d", out_port), ("INPUT", "-s", in_port)] {
            self.exec(&[
                "iptables", "-A", chain, addr, &peer, "-p", "tcp", flag, &number, "-j", "DROP",
            ])?;
        }
        Ok(())
    }

    /// Lets every packet through again.
    pub fn restore(&self) -> Result<()> {
        self.exec(&["iptables", "-F"])
    }

    /// `ip netns exec <ns>`, the prefix of a command run on this host.
    pub fn prefix(&self) -> [String; 4] {
        ["ip".into(), "netns".into(), "exec".into(), self.ns.clone()]
    }
}
