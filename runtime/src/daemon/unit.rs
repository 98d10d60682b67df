//! The systemd drop-in that fits the service to one configuration (`lookout check-config FILE --unit-limits`):
//! memory limits from its plan and board budget, the IP addresses its listeners (HTTP, Wyoming) may talk to, and
//! the narrower /proc view when nothing it runs reads /proc beyond the process itself.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use crate::board::BoardSource;
use crate::config::{Config, Source};
use crate::plan::Plan;

/// Private, carrier-grade NAT, unique-local and link-local networks: where a home or office network's clients are.
const LOCAL_NETWORKS: &str =
    "localhost link-local multicast 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 100.64.0.0/10 fc00::/7";

/// The drop-in's text for `config` (read from `path`, its board found as `board_source`) and its memory `plan`.
pub fn limits_drop_in(config: &Config, board_source: &BoardSource, plan: &Plan, path: &Path) -> String {
    let budget = plan.budget_mib.floor() as u64;
    // Reclaim pressure starts half way between the planned peak and the budget; the budget is the hard limit.
    let high = ((plan.total_mib + plan.budget_mib) / 2.0).ceil().min(plan.budget_mib) as u64;
    let mut out = format!(
        "# Written by `lookout check-config {} --unit-limits` (board {}, plan {:.0} MiB of {budget} MiB).\n\
         # Write it again after changing the configuration or the models, then `systemctl daemon-reload`.\n\
         [Service]\n\
         MemoryHigh={high}M\n\
         MemoryMax={budget}M\n\
         MemorySwapMax=0\n\
         PrivateMounts=yes\n",
        path.display(),
        config.board.name,
        plan.total_mib,
    );
    let mut reaches = vec![listener_reach("The HTTP API", &config.http.listen)];
    if config.wyoming.enabled {
        reaches.push(listener_reach("The Wyoming server", &config.wyoming.listen));
    }
    if config.mqtt.enabled {
        let (host, port) = (&config.mqtt.host, config.mqtt.port);
        reaches.push(match broker_reach(host) {
            Reach::Loopback => (Reach::Loopback, format!("# The MQTT broker is on loopback ({host}:{port}).\n")),
            Reach::Local => (Reach::Local, format!("# The MQTT broker {host}:{port} is on a local network.\n")),
            Reach::Anywhere => {
                (Reach::Anywhere, format!("# The MQTT broker {host}:{port} may be anywhere: no IP restriction.\n"))
            }
        });
    }
    for (_, comment) in &reaches {
        out.push_str(comment);
    }
    match reaches.iter().map(|r| r.0).max().unwrap_or(Reach::Loopback) {
        Reach::Loopback => out.push_str("IPAddressDeny=any\nIPAddressAllow=localhost\n"),
        Reach::Local => out.push_str(&format!("IPAddressDeny=any\nIPAddressAllow={LOCAL_NETWORKS}\n")),
        Reach::Anywhere => {}
    }
    let reads_proc = match (board_source, &config.microphone.device) {
        (BoardSource::Detected(_), _) => Some("board = \"auto\" is detected from /proc/device-tree and /proc/cpuinfo"),
        (_, Source::Device(_)) if config.stage_enabled("speech") => Some("ALSA reads /proc/asound"),
        _ => None,
    };
    match reads_proc {
        None => out.push_str("ProcSubset=pid\n"),
        Some(why) => out.push_str(&format!("# No ProcSubset=pid: {why}.\n")),
    }
    out
}

/// Who can reach a listener, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reach {
    Loopback,
    Local,
    Anywhere,
}

/// Who can reach a listener on `listen`, and the drop-in's comment saying so.
fn listener_reach(what: &str, listen: &str) -> (Reach, String) {
    match listen.parse::<SocketAddr>().map(|a| a.ip()) {
        Ok(ip) if ip.is_loopback() => (Reach::Loopback, format!("# {what} listens on loopback only ({listen}).\n")),
        Ok(ip) if ip.is_unspecified() || is_local(ip) => {
            (Reach::Local, format!("# {what} listens on {listen}: clients on local networks only.\n"))
        }
        _ => (
            Reach::Anywhere,
            format!("# {what} listens on {listen}, which is not a local address: no IP restriction.\n"),
        ),
    }
}

/// Where a broker named by `host` is: by its address, or for a name, loopback for `localhost`, a local network for
/// a name without dots or under a local-only domain (`.local`, `.lan`, `.home`, `.internal`, `.home.arpa`), and
/// anywhere for any other name.
fn broker_reach(host: &str) -> Reach {
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return match ip {
            ip if ip.is_loopback() => Reach::Loopback,
            ip if is_local(ip) => Reach::Local,
            _ => Reach::Anywhere,
        };
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    const LOCAL_DOMAINS: [&str; 5] = [".local", ".lan", ".home", ".internal", ".home.arpa"];
    match name.as_str() {
        "localhost" => Reach::Loopback,
        _ if !name.contains('.') || LOCAL_DOMAINS.iter().any(|d| name.ends_with(d)) => Reach::Local,
        _ => Reach::Anywhere,
    }
}

fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private() || v4.is_link_local() || (v4.octets()[0] == 100 && v4.octets()[1] & 0xc0 == 64)
        }
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00 || (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::Probe;
    use crate::plan::Item;

    fn drop_in(extra: &str, board: &str) -> String {
        let text = format!(
            "board = \"{board}\"\n{extra}\n[camera]\ndevice = \"/dev/video0\"\n[microphone]\ndevice = \"default\"\n"
        );
        let probe = Probe { device_tree_model: Some("Raspberry Pi 4 Model B Rev 1.5".into()), cpuinfo: String::new() };
        let loaded = Config::parse(&text, Path::new("/etc/lookout/lookout.toml"), None, &probe).unwrap();
        let item = |mib| Item { name: "x".into(), mib, basis: String::new() };
        let plan = Plan {
            board: loaded.config.board.name.clone(),
            budget_mib: 350.0,
            resident: vec![item(250.0)],
            peak_extra: item(52.0),
            total_mib: 302.0,
            measured_on: "x86_64".into(),
        };
        limits_drop_in(&loaded.config, &loaded.board_source, &plan, Path::new("/etc/lookout/lookout.toml"))
    }

    #[test]
    fn memory_limits_come_from_the_plan_and_the_budget() {
        let text = drop_in("", "rpi4");
        assert!(text.contains("\nMemoryHigh=326M\nMemoryMax=350M\nMemorySwapMax=0\n"), "{text}");
    }

    #[test]
    fn the_network_allowed_follows_the_listen_address() {
        let loopback = drop_in("", "rpi4");
        assert!(loopback.contains("IPAddressDeny=any\nIPAddressAllow=localhost\n"), "{loopback}");
        for listen in ["0.0.0.0:8470", "192.168.1.20:8470", "[::]:8470"] {
            let lan = drop_in(&format!("[http]\nlisten = \"{listen}\"\ntoken = \"secret-token-123456\""), "rpi4");
            assert!(lan.contains(&format!("IPAddressDeny=any\nIPAddressAllow={LOCAL_NETWORKS}\n")), "{lan}");
        }
        let public = drop_in("[http]\nlisten = \"203.0.113.7:8470\"\ntoken = \"secret-token-123456\"", "rpi4");
        assert!(!public.contains("IPAddressDeny"), "{public}");
        // The widest of the listeners decides: a Wyoming server for Home Assistant on the local network.
        let wyoming = drop_in("[wyoming]\nenabled = true\nlisten = \"0.0.0.0:10300\"", "rpi4");
        assert!(wyoming.contains(&format!("IPAddressDeny=any\nIPAddressAllow={LOCAL_NETWORKS}\n")), "{wyoming}");
        assert!(wyoming.contains("# The Wyoming server listens on 0.0.0.0:10300: clients on local networks only.\n"));
        let off = drop_in("[wyoming]\nlisten = \"0.0.0.0:10300\"", "rpi4");
        assert!(off.contains("IPAddressAllow=localhost\n") && !off.contains("Wyoming"), "{off}");
        // The MQTT broker the daemon connects to is let through.
        let broker = |host: &str| drop_in(&format!("[mqtt]\nenabled = true\nhost = \"{host}\""), "rpi4");
        assert!(broker("127.0.0.1").contains("IPAddressAllow=localhost\n"));
        for local in ["192.168.1.5", "homeassistant.local", "mosquitto", "broker.home.arpa"] {
            assert!(broker(local).contains(&format!("IPAddressAllow={LOCAL_NETWORKS}\n")), "{local}");
        }
        assert!(!broker("mqtt.example.com").contains("IPAddressDeny"), "a broker elsewhere");
        assert!(!broker("203.0.113.9").contains("IPAddressDeny"));
    }

    #[test]
    fn the_proc_subset_is_narrowed_only_when_nothing_reads_proc() {
        assert!(drop_in("", "auto").contains("# No ProcSubset=pid: board = \"auto\""));
        assert!(drop_in("", "rpi4").contains("# No ProcSubset=pid: ALSA reads /proc/asound"));
        let no_speech = drop_in("[models]\nspeech = \"off\"", "rpi4");
        assert!(no_speech.contains("\nProcSubset=pid\n"), "{no_speech}");
    }
}
