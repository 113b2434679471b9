//! Real NATs on this machine, for the NAT traversal tests and benchmark: Linux network namespaces joined by
//! veth pairs, with nftables doing what a home router or a cloud NAT does.
//!
//! The layout: a "public" namespace whose bridge holds 203.0.113.1/24 (the rendezvous listens
//! there); each NAT is a namespace with its outside on that bridge (203.0.113.1N) and its inside
//! on a bridge of its own (192.0.2.0/24 for the first NAT, 198.51.100.0/24 for the second), with
//! hosts behind it. A NAT masquerades what leaves its outside interface, endpoint-independently
//! (Linux keeps the source port when it can) or with a random port per destination (symmetric),
//! and drops every packet arriving on its outside that is not part of a flow its inside started,
//! as real NATs effectively do. Without that drop, Linux would answer an early punch packet and
//! then give the inside's own next packet a different port.
//!
//! Every address comes from the documentation ranges and nothing is connected to the host's own
//! interfaces, so no packet leaves the namespaces. The namespaces are removed on drop. Needs
//! root, `ip`, `nft` and `conntrack` (the test command installs nftables and conntrack).

use std::net::Ipv4Addr;
use std::process::Command;

/// Why the lab could not be built or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// Network namespaces need root.
    #[error("the NAT lab builds network namespaces and needs root (CI runs it as root)")]
    NotRoot,
    /// The documentation address ranges give private networks to two NATs only.
    #[error("a lab has at most two NATs")]
    TooManyNats,
    /// A tool is missing.
    #[error("the NAT lab needs `{0}`: scripts/test installs it, or apt-get install nftables conntrack iproute2")]
    MissingTool(&'static str),
    /// A command failed.
    #[error("{command} failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its error output, or why it could not start.
        detail: String,
    },
}

/// How a NAT maps its inside's flows to its outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// One public port per inside socket, whatever the destination (a "cone" NAT).
    EndpointIndependent,
    /// A new random public port for each destination (a "symmetric" NAT, such as AWS's NAT
    /// Gateway); peers cannot guess it.
    Symmetric,
}

/// A namespace with an address.
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// Two hosts joined through a router whose forwarding passes a TUN device ([`Lab::wire`]).
#[derive(Debug, Clone)]
pub struct Wire {
    /// The router (its address toward the first host).
    pub router: Host,
    /// The first host.
    pub a: Host,
    /// The second host.
    pub b: Host,
}

impl Wire {
    /// Routes the hosts' traffic through `tun0`, once a program is attached to it.
    pub fn route_through_tun(&self) -> Result<(), LabError> {
        ip(&self.router.ns, "link set tun0 up")?;
        ip(&self.router.ns, "route add default dev tun0 table 100")?;
        run(Command::new("ip").args([
            "netns",
            "exec",
            &self.router.ns,
            "sysctl",
            "-qw",
            "net.ipv4.conf.tun0.rp_filter=0",
        ]))
    }
}

/// A NAT and the private network behind it.
#[derive(Debug)]
pub struct Nat {
    ns: String,
    /// The first three octets of its private network.
    private: [u8; 3],
    hosts: u8,
}

/// The namespaces of one test; all removed when it is dropped.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    nats: u8,
}

impl Lab {
    /// A public network with nothing on it but its bridge at 203.0.113.1. `tag` keeps the
    /// namespaces of tests running at once apart.
    pub fn new(tag: &str) -> Result<Lab, LabError> {
        require_root_and_tools()?;
        let prefix = format!("tm{}{tag}", std::process::id() % 100_000);
        let mut lab = Lab { prefix, namespaces: Vec::new(), nats: 0 };
        let public = lab.namespace("pub")?;
        ip(&public, "link add br0 type bridge")?;
        ip(&public, "addr add 203.0.113.1/24 dev br0")?;
        ip(&public, "link set br0 up")?;
        Ok(lab)
    }

    /// The public network's own host (the bridge's address), for the rendezvous and the client.
    pub fn public(&self) -> Host {
        Host { ns: format!("{}pub", self.prefix), ip: Ipv4Addr::new(203, 0, 113, 1) }
    }

    /// A NAT on the public network with an empty private network behind it (at most two).
    pub fn nat(&mut self, mapping: Mapping) -> Result<Nat, LabError> {
        self.nats += 1;
        let k = self.nats;
        if k > 2 {
            return Err(LabError::TooManyNats);
        }
        let private = if k == 1 { [192, 0, 2] } else { [198, 51, 100] };
        let public = Ipv4Addr::new(203, 0, 113, 10 + k);
        let ns = self.namespace(&format!("nat{k}"))?;
        let public_ns = format!("{}pub", self.prefix);
        veth(&ns, "out", &public_ns, &format!("nat{k}"))?;
        ip(&public_ns, &format!("link set nat{k} master br0"))?;
        ip(&public_ns, &format!("link set nat{k} up"))?;
        ip(&ns, &format!("addr add {public}/24 dev out"))?;
        ip(&ns, "link set out up")?;
        ip(&ns, "link add br0 type bridge")?;
        ip(&ns, &format!("addr add {}.{}.{}.1/24 dev br0", private[0], private[1], private[2]))?;
        ip(&ns, "link set br0 up")?;
        run(Command::new("ip").args(["netns", "exec", &ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"]))?;
        let random = if mapping == Mapping::Symmetric { " random,fully-random" } else { "" };
        let rules = format!(
            "table ip nat {{\n\
             \tchain post {{ type nat hook postrouting priority 100; oifname \"out\" masquerade{random}; }}\n\
             }}\n\
             table ip filter {{\n\
             \tchain unsolicited {{ type filter hook prerouting priority 0; policy accept;\n\
             \t\tiifname \"out\" ct state established,related accept; iifname \"out\" drop; }}\n\
             }}\n"
        );
        nft(&ns, &rules)?;
        Ok(Nat { ns, private, hosts: 0 })
    }

    /// A host on `nat`'s private network, routed through it.
    pub fn host_behind(&mut self, nat: &mut Nat) -> Result<Host, LabError> {
        nat.hosts += 1;
        let [a, b, c] = nat.private;
        let host_ip = Ipv4Addr::new(a, b, c, 10 + nat.hosts);
        let name = format!("{}h{}", &nat.ns[self.prefix.len()..], nat.hosts);
        let ns = self.namespace(&name)?;
        veth(&ns, "eth0", &nat.ns, &format!("h{}", nat.hosts))?;
        ip(&nat.ns, &format!("link set h{} master br0", nat.hosts))?;
        ip(&nat.ns, &format!("link set h{} up", nat.hosts))?;
        ip(&ns, &format!("addr add {host_ip}/24 dev eth0"))?;
        ip(&ns, "link set eth0 up")?;
        ip(&ns, &format!("route add default via {a}.{b}.{c}.1"))?;
        Ok(Host { ns, ip: host_ip })
    }

    /// Two hosts on networks of their own joined by a router namespace whose forwarding between
    /// them goes through the TUN device `tun0` (created, down): a program attached to it in the
    /// router (a delay line) carries every packet from one host to the other. Traffic to the
    /// router's own addresses does not pass the device. The router is `10.9.1.1` to the first
    /// host (`10.9.1.2`) and `10.9.2.1` to the second (`10.9.2.2`).
    pub fn wire(&mut self) -> Result<Wire, LabError> {
        let router = self.namespace("wr")?;
        let (a, b) = (self.namespace("wa")?, self.namespace("wb")?);
        run(Command::new("ip").args(["netns", "exec", &router, "sysctl", "-qw", "net.ipv4.ip_forward=1"]))?;
        ip(&router, "tuntap add dev tun0 mode tun")?;
        for (k, host) in [(1, &a), (2, &b)] {
            veth(host, "eth0", &router, &format!("to{k}"))?;
            ip(&router, &format!("addr add 10.9.{k}.1/24 dev to{k}"))?;
            ip(&router, &format!("link set to{k} up"))?;
            ip(host, &format!("addr add 10.9.{k}.2/24 dev eth0"))?;
            ip(host, "link set eth0 up")?;
            ip(host, &format!("route add default via 10.9.{k}.1"))?;
            // What arrives from a host is routed into the delay line; what the delay line writes
            // back arrives on tun0 and follows the main table to the other host.
            ip(&router, &format!("rule add iif to{k} table 100"))?;
        }
        for sysctl in ["net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"] {
            run(Command::new("ip").args(["netns", "exec", &router, "sysctl", "-qw", sysctl]))?;
        }
        Ok(Wire {
            router: Host { ns: router, ip: Ipv4Addr::new(10, 9, 1, 1) },
            a: Host { ns: a, ip: Ipv4Addr::new(10, 9, 1, 2) },
            b: Host { ns: b, ip: Ipv4Addr::new(10, 9, 2, 2) },
        })
    }

    /// Makes each NAT forget every mapping, as a NAT does when its timers expire while no packet
    /// passes, or when it restarts: for `blackout` no packet crosses it, its connection tracking
    /// is emptied, and from then on it maps UDP flows to ports from 20000 up, so every inside
    /// socket gets a new public port.
    pub fn forget_mappings(&self, nats: &[&Nat], blackout: std::time::Duration) -> Result<(), LabError> {
        for nat in nats {
            let rules =
                "table ip blackout {\n\tchain silence { type filter hook prerouting priority -300; policy drop; }\n}\n";
            nft(&nat.ns, rules)?;
            run(Command::new("ip").args(["netns", "exec", &nat.ns, "conntrack", "-F"]))?;
            let remap = "flush chain ip nat post\n\
                         add rule ip nat post oifname \"out\" ip protocol udp masquerade to :20000-29999\n\
                         add rule ip nat post oifname \"out\" masquerade\n";
            nft(&nat.ns, remap)?;
        }
        std::thread::sleep(blackout);
        for nat in nats {
            nft(&nat.ns, "delete table ip blackout\n")?;
        }
        Ok(())
    }

    fn namespace(&mut self, name: &str) -> Result<String, LabError> {
        let ns = format!("{}{name}", self.prefix);
        // A namespace a crashed earlier run of this process id left behind.
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        run(Command::new("ip").args(["netns", "add", &ns]))?;
        self.namespaces.push(ns.clone());
        ip(&ns, "link set lo up")?;
        Ok(ns)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn require_root_and_tools() -> Result<(), LabError> {
    let uid = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if uid.as_deref().unwrap_or("?") != "0" {
        return Err(LabError::NotRoot);
    }
    for tool in ["ip", "nft", "conntrack"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output();
        if !found.is_ok_and(|o| o.status.success()) {
            return Err(LabError::MissingTool(tool));
        }
    }
    Ok(())
}

/// A veth pair: `a` in namespace `ns_a`, `b` in `ns_b`.
fn veth(ns_a: &str, a: &str, ns_b: &str, b: &str) -> Result<(), LabError> {
    run(Command::new("ip").args(["link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b]))
}

fn ip(ns: &str, args: &str) -> Result<(), LabError> {
    run(Command::new("ip").args(["-n", ns]).args(args.split_whitespace()))
}

fn nft(ns: &str, rules: &str) -> Result<(), LabError> {
    use std::io::Write;
    let failed = |detail: String| LabError::Command { command: format!("nft in {ns}:\n{rules}"), detail };
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(rules.as_bytes()).map_err(|e| failed(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| failed(e.to_string()))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(failed(String::from_utf8_lossy(&out.stderr).into_owned())),
    }
}

fn run(cmd: &mut Command) -> Result<(), LabError> {
    let command = format!("{cmd:?}");
    let failed = |detail: String| LabError::Command { command, detail };
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => return Err(failed(e.to_string())),
    };
    match out.status.success() {
        true => Ok(()),
        false => Err(failed(String::from_utf8_lossy(&out.stderr).into_owned())),
    }
}
