//! Each device type's Linux check: what the guest reported, judged.

use super::{last_lines, LinuxTierSpec, MARKER};
use crate::probe::ProbeReport;
use crate::scenario::ScenarioRun;

pub(super) fn type_outcome(
    name: &str,
    spec: &LinuxTierSpec,
    guest: &ProbeReport,
    run: &ScenarioRun,
) -> Result<String, String> {
    let at = |word: &str| guest.first_at(name, word);
    let none = || format!("no {name} record from the guest");
    match name {
        "fs" => {
            let io = at("io").ok_or_else(|| "the mount failed".to_string())?;
            if io.get("wrote") != io.get("read") {
                let errors: Vec<&str> = guest.all("fs").filter_map(|r| r.get("what")).collect();
                return Err(format!(
                    "read back {:?}, wrote {:?}: {}; backend: {}",
                    io.get("read"),
                    io.get("wrote"),
                    errors.join(" | "),
                    last_lines(&run.out_file("backend.log"))
                ));
            }
            match at("namespace").and_then(|r| r.get("ok")) {
                Some("1") => {}
                _ => return Err("mkdir, rename, symlink, unlink or rmdir failed".into()),
            }
            if at("unmounted").is_none() && guest.all("fs").all(|r| r.get("unmounted").is_none()) {
                return Err("umount failed".into());
            }
            Ok("mounted; 1 MiB + 1 written and read back with the same sha256; mkdir, rename, symlink, unlink, rmdir; unmounted".into())
        }
        "block" => {
            let size = at("size").ok_or_else(none)?;
            let sectors = size.number("sectors").unwrap_or(0);
            if let Some(capacity) = spec.config.as_deref().and_then(|c| c.get(0..8)) {
                let capacity = u64::from_le_bytes(capacity.try_into().unwrap_or_default());
                if capacity != sectors {
                    return Err(format!(
                        "Linux shows {sectors} sectors, the config says {capacity}"
                    ));
                }
            }
            match at("read-end") {
                Some(r) if r.get("ok") == Some("1") => {}
                Some(r) => {
                    return Err(format!(
                        "reading the last sectors of the {sectors} the config announces failed: {} (so nothing was written: what cannot be put back is never overwritten)",
                        r.get("error").unwrap_or("?")
                    ))
                }
                None => return Err(none()),
            }
            if size.get("ro") == Some("1") {
                return Ok(format!("{sectors} sectors, read-only, last MiB read"));
            }
            let write = at("write").ok_or_else(|| "no write record".to_string())?;
            if write.get("wrote") != write.get("read") {
                return Err(format!(
                    "read back {:?} after writing {:?}",
                    write.get("read"),
                    write.get("wrote")
                ));
            }
            if guest.all("block").all(|r| r.get("restored").is_none()) {
                return Err("restoring the original sectors failed".into());
            }
            Ok(format!("{sectors} sectors as the config says; last MiB written, synced, read back with the same sha256, restored"))
        }
        "rng" => {
            let distinct = guest
                .all("rng")
                .find_map(|r| r.number("distinct"))
                .ok_or_else(|| "no /dev/hwrng".to_string())?;
            if distinct < 128 {
                return Err(format!(
                    "only {distinct} distinct values in 1 KiB from /dev/hwrng"
                ));
            }
            Ok(format!(
                "1 KiB from /dev/hwrng, {distinct} distinct byte values"
            ))
        }
        "console" => {
            let port = guest
                .all("console")
                .find_map(|r| r.get("port"))
                .ok_or_else(none)?;
            if port == "none" {
                return Err("no /dev/hvc0".into());
            }
            let Some(port) = spec.console_tcp_port else {
                return Ok("hvc0 appeared and took the guest's line (give the backend's TCP port to check its side)".into());
            };
            let peer = run.out_file("console-peer.log");
            if !peer.contains(&format!("guest-says-{MARKER}")) {
                return Err(format!(
                    "the guest's line did not reach TCP port {port}: {:?}",
                    last_lines(&peer)
                ));
            }
            let reading = guest.all("console").find(|r| r.get("read").is_some());
            let read = reading.and_then(|r| r.get("read")).unwrap_or("none");
            if read == "none" {
                let waited = reading
                    .and_then(|r| {
                        let at = |k| r.get(k)?.parse::<f64>().ok();
                        Some(at("to")? - at("from")?)
                    })
                    .map_or(String::new(), |s| format!(" in {s:.1} s"));
                let sent = if run.records.first("console-reply").is_some() {
                    "the host sent its line to port {port}"
                } else {
                    "the host never saw the guest's line to answer it"
                };
                return Err(format!(
                    "the guest read nothing from hvc0{waited} ({}); backend: {}",
                    sent.replace("{port}", &port.to_string()),
                    last_lines(&run.out_file("backend.log"))
                ));
            }
            if read != format!("host-says-{MARKER}") {
                return Err(format!(
                    "the guest read {read:?} from hvc0, not the line sent to port {port}"
                ));
            }
            Ok(format!("hvc0 appeared; the guest's line reached port {port}, and the line sent there reached the guest"))
        }
        "vsock" => {
            let echo = guest.all("vsock").find_map(|r| r.get("echo"));
            // Without --vsock-host-socket it is skipped (`means`).
            match echo {
                Some(e) if e.contains("conformance-7f3a-vsock") => Ok(format!(
                    "guest connected to the host (CID 2, port 5000): {e}"
                )),
                e => Err(format!("no echo through the backend: {e:?}")),
            }
        }
        "sound" => {
            let cards = guest
                .all("sound")
                .find_map(|r| r.get("cards"))
                .unwrap_or("");
            let pcms = guest
                .all("sound")
                .find_map(|r| r.number("pcms"))
                .unwrap_or(0);
            if cards.is_empty() {
                return Err("no ALSA card in /proc/asound/cards".into());
            }
            let announced = spec
                .config
                .as_deref()
                .and_then(|c| c.get(4..8))
                .map(|s| u32::from_le_bytes(s.try_into().unwrap_or_default()));
            let streams = guest
                .all("sound")
                .find_map(|r| r.number("streams"))
                .unwrap_or(0);
            if let Some(n) = announced {
                if u64::from(n) != streams {
                    return Err(format!(
                        "{streams} PCM streams in /proc/asound, the config announces {n}"
                    ));
                }
            }
            Ok(format!(
                "card {cards:?}, {pcms} PCM device(s), {streams} stream(s)"
            ))
        }
        "scsi" => {
            let disk = guest
                .all("scsi")
                .find_map(|r| r.get("disk"))
                .ok_or_else(none)?;
            if disk == "none" {
                return Err("no SCSI disk appeared".into());
            }
            let write = at("write").ok_or_else(|| "no write record".to_string())?;
            if write.get("wrote") != write.get("read") {
                return Err("the last MiB read back differs from what was written".into());
            }
            Ok(
                "a disk appeared; its last MiB written, read back with the same sha256, restored"
                    .into(),
            )
        }
        "net" => {
            let link = guest
                .all("net")
                .find(|r| r.get("link").is_some())
                .ok_or_else(|| "no link appeared".to_string())?;
            Ok(format!(
                "{} with MAC {}",
                link.get("link").unwrap_or("?"),
                link.get("mac").unwrap_or("?")
            ))
        }
        _ => Ok("the driver bound".into()),
    }
}
