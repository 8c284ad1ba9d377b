//! Path facts: interfaces and their MTU, default routes, resolvers, the route toward each
//! target address. Read from `/sys`, `/etc/resolv.conf` and `ip -j` (iproute2's JSON); a fact
//! that cannot be read is reported as unknown, never guessed.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `ip` answers in milliseconds; a hung one must not hang the probe.
const IP_TIMEOUT: Duration = Duration::from_secs(5);
/// More than this many interfaces (containers hosts have hundreds of veths) are summarised.
const MAX_INTERFACES: usize = 32;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PathFacts {
    pub interfaces: Vec<Interface>,
    pub default_routes: Vec<DefaultRoute>,
    pub resolvers: Vec<String>,
    /// `works`, `fails`, `untested` (no AAAA among the targets) or `no_route`.
    pub ipv6_egress: String,
    pub destinations: Vec<Destination>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub mtu: Option<u32>,
    pub state: String,
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DefaultRoute {
    pub family: String,
    pub gateway: Option<String>,
    pub device: Option<String>,
    pub source: Option<String>,
}

/// One remote address the probe talked to, and the path toward it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Destination {
    pub address: String,
    /// Target hosts that resolved to it.
    pub hosts: Vec<String>,
    pub device: Option<String>,
    pub gateway: Option<String>,
    pub source: Option<String>,
    /// The route's MTU (a cached PMTU or a route `mtu`), else the outgoing device's.
    pub route_mtu: Option<u32>,
    /// Measured with DF probes; `None` with the reason in `path_mtu_note`.
    pub path_mtu: Option<u32>,
    pub path_mtu_note: String,
}

/// Runs `ip -j <args>` with a deadline and parses its JSON.
pub async fn ip_json(args: &[&str]) -> Result<Value, String> {
    let mut cmd = tokio::process::Command::new("ip");
    cmd.arg("-j").args(args).kill_on_drop(true);
    let out = tokio::time::timeout(IP_TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("`ip {}` did not answer in {IP_TIMEOUT:?}", args.join(" ")))?
        .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`ip {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("`ip {}`: {e}", args.join(" ")))
}

fn str_of(v: &Value, key: &str) -> Option<String> {
    v[key].as_str().map(str::to_string)
}

fn sys_mtu(device: &str) -> Option<u32> {
    if device.contains('/') || device.contains("..") {
        return None;
    }
    std::fs::read_to_string(format!("/sys/class/net/{device}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Interfaces, default routes and resolvers.
pub async fn local_facts() -> PathFacts {
    let mut facts = PathFacts {
        ipv6_egress: "untested".into(),
        ..PathFacts::default()
    };
    match ip_json(&["addr", "show"]).await {
        Ok(Value::Array(links)) => {
            let total = links.len();
            for l in links.iter().take(MAX_INTERFACES) {
                let name = str_of(l, "ifname").unwrap_or_default();
                let addresses = l["addr_info"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| {
                        Some(format!(
                            "{}/{}",
                            a["local"].as_str()?,
                            a["prefixlen"].as_u64()?
                        ))
                    })
                    .collect();
                facts.interfaces.push(Interface {
                    mtu: l["mtu"]
                        .as_u64()
                        .map(|m| m as u32)
                        .or_else(|| sys_mtu(&name)),
                    state: str_of(l, "operstate").unwrap_or_default(),
                    name,
                    addresses,
                });
            }
            if total > MAX_INTERFACES {
                facts.notes.push(format!(
                    "{total} interfaces; only the first {MAX_INTERFACES} are listed"
                ));
            }
        }
        Ok(_) => facts.notes.push("`ip addr` gave no list".into()),
        Err(e) => facts.notes.push(format!("interfaces unknown: {e}")),
    }
    for (family, flag) in [("ipv4", "-4"), ("ipv6", "-6")] {
        match ip_json(&[flag, "route", "show", "default"]).await {
            Ok(Value::Array(routes)) => {
                for r in routes.iter().take(8) {
                    facts.default_routes.push(DefaultRoute {
                        family: family.into(),
                        gateway: str_of(r, "gateway"),
                        device: str_of(r, "dev"),
                        source: str_of(r, "prefsrc"),
                    });
                }
            }
            Ok(_) => {}
            Err(e) => facts
                .notes
                .push(format!("{family} default route unknown: {e}")),
        }
    }
    facts.resolvers = resolvers();
    facts
}

/// Nameservers of `/etc/resolv.conf`; behind systemd-resolved's stub, also the real ones.
pub fn resolvers() -> Vec<String> {
    let mut out = BTreeSet::new();
    for file in ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().take(1000) {
            if let Some(ns) = line.trim().strip_prefix("nameserver") {
                out.insert(ns.trim().to_string());
            }
        }
    }
    out.into_iter().collect()
}

/// The route toward `addr`: (device, gateway, source, MTU).
pub async fn route_to(
    addr: IpAddr,
) -> Result<(Option<String>, Option<String>, Option<String>, Option<u32>), String> {
    let text = addr.to_string();
    let v = ip_json(&["route", "get", &text]).await?;
    let r = v.get(0).cloned().unwrap_or(Value::Null);
    let device = str_of(&r, "dev");
    let cached = r["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|m| m["mtu"].as_u64())
        .or_else(|| r["mtu"].as_u64())
        .map(|m| m as u32);
    let mtu = cached.or_else(|| device.as_deref().and_then(sys_mtu));
    Ok((device, str_of(&r, "gateway"), str_of(&r, "prefsrc"), mtu))
}

impl PathFacts {
    pub fn render(&self) -> String {
        let mut out = String::from("\npath facts\n");
        for i in &self.interfaces {
            if i.name == "lo" {
                continue;
            }
            let _ = writeln!(
                out,
                "  interface {:<12} mtu {:<6} {:<8} {}",
                i.name,
                i.mtu.map_or("?".into(), |m| m.to_string()),
                i.state,
                i.addresses.join(" ")
            );
        }
        for r in &self.default_routes {
            let _ = writeln!(
                out,
                "  default {} via {} dev {} src {}",
                r.family,
                r.gateway.as_deref().unwrap_or("-"),
                r.device.as_deref().unwrap_or("-"),
                r.source.as_deref().unwrap_or("-")
            );
        }
        let _ = writeln!(out, "  resolvers: {}", self.resolvers.join(" "));
        let _ = writeln!(out, "  ipv6 egress: {}", self.ipv6_egress);
        for d in &self.destinations {
            let _ = writeln!(
                out,
                "  to {:<40} dev {} via {} route mtu {} path mtu {} ({})",
                format!("{} ({})", d.address, d.hosts.join(",")),
                d.device.as_deref().unwrap_or("?"),
                d.gateway.as_deref().unwrap_or("-"),
                d.route_mtu.map_or("?".into(), |m| m.to_string()),
                d.path_mtu.map_or("not measured".into(), |m| m.to_string()),
                d.path_mtu_note
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        out
    }
}
