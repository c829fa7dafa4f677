//! Rendering for people (aligned tables, `key: value` lines, ages, sizes) and for scripts
//! (pretty JSON of the API objects), and writing it to stdout.
//!
//! Column alignment is done here by hand: it is a dozen lines for cells that are plain
//! names, states and numbers, less than wiring up a table crate.

use std::io::Write;

use pitwall_api::{Event, Health, Image, Vm};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Spaces between table columns.
const GAP: usize = 3;

/// Write `text` to stdout and flush it.
pub fn emit(text: &str) -> std::io::Result<()> {
    emit_bytes(text.as_bytes())
}

/// Write raw bytes (e.g. a serial console) to stdout and flush them.
pub fn emit_bytes(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

/// Pretty-printed JSON and a newline.
pub fn json<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

/// An aligned table: every column as wide as its widest cell, no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                let pad = widths[i - 1] + GAP - row[i - 1].chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
            line.push_str(cell);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `key: value` lines with the values aligned.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{:<w$} {v}\n", format!("{k}:"), w = width + 1))
        .collect()
}

/// How long ago an RFC 3339 time was, like `5s`, `3m`, `2h`, `4d`; `?` if it is not a time.
pub fn age(rfc3339: &str, now: OffsetDateTime) -> String {
    match OffsetDateTime::parse(rfc3339, &Rfc3339) {
        Ok(t) => short_duration((now - t).whole_seconds()),
        Err(_) => "?".into(),
    }
}

/// Seconds in the largest whole unit: `59s`, `59m`, `23h`, `4d`. Negative (clock skew) is 0s.
pub fn short_duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// A size in MiB: `512MiB`, or `2GiB` when it is whole GiB.
pub fn mib(n: u32) -> String {
    if n >= 1024 && n % 1024 == 0 {
        format!("{}GiB", n / 1024)
    } else {
        format!("{n}MiB")
    }
}

/// A size in bytes, in the largest binary unit with one decimal: `830B`, `1.5KiB`, `12.3MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

fn or_dash(v: Option<&str>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or("-").to_owned()
}

pub fn vm_table(vms: &[Vm], now: OffsetDateTime) -> String {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|vm| {
            vec![
                vm.name.clone(),
                vm.owner.clone(),
                vm.state.clone(),
                vm.image.clone(),
                vm.vcpus.to_string(),
                mib(vm.memory_mib),
                mib(vm.disk_mib),
                or_dash(vm.host.as_deref()),
                age(&vm.created_at, now),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "OWNER", "STATE", "IMAGE", "VCPUS", "MEMORY", "DISK", "HOST", "AGE",
        ],
        &rows,
    )
}

pub fn service_table(services: &[pitwall_api::ServiceStatus]) -> String {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.state.clone(),
                s.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                s.restart.as_str().to_string(),
                s.restarts.to_string(),
                s.last_exit.map_or_else(|| "-".into(), |c| c.to_string()),
            ]
        })
        .collect();
    table(
        &["NAME", "STATE", "PID", "RESTART", "RESTARTS", "LAST EXIT"],
        &rows,
    )
}

pub fn vm_details(vm: &Vm, now: OffsetDateTime) -> String {
    let mut pairs = vec![
        ("name", vm.name.clone()),
        ("id", vm.id.clone()),
        ("state", vm.state.clone()),
        ("desired state", vm.desired_state.clone()),
    ];
    if let Some(reason) = vm.reason.as_deref().filter(|r| !r.is_empty()) {
        pairs.push(("reason", reason.to_owned()));
    }
    pairs.extend([
        ("image", vm.image.clone()),
        ("vcpus", vm.vcpus.to_string()),
        ("memory", mib(vm.memory_mib)),
        ("disk", mib(vm.disk_mib)),
        ("host", or_dash(vm.host.as_deref())),
        ("address", or_dash(vm.address.as_deref())),
        ("owner", or_dash(Some(&vm.owner))),
        ("group", or_dash(vm.group.as_deref())),
        ("generation", vm.generation.to_string()),
    ]);
    if !vm.exposed_ports.is_empty() {
        pairs.push(("exposed ports", vm.exposed_ports.join(" ")));
    }
    let r = &vm.run;
    let list = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
    if let Some(e) = &r.entrypoint {
        pairs.push(("entrypoint", list(e)));
    }
    if let Some(c) = &r.cmd {
        pairs.push(("cmd", list(c)));
    }
    if !r.env.is_empty() {
        pairs.push(("env", list(&r.env)));
    }
    if let Some(w) = &r.working_dir {
        pairs.push(("workdir", w.clone()));
    }
    if let Some(u) = &r.user {
        pairs.push(("user", u.clone()));
    }
    for svc in &r.services {
        let command = if svc.command.is_empty() {
            "(the image's program)".to_string()
        } else {
            list(&svc.command)
        };
        pairs.push((
            "service",
            format!("{} ({}) {command}", svc.name, svc.restart.as_str()),
        ));
    }
    pairs.extend([
        (
            "created",
            format!("{} ({} ago)", vm.created_at, age(&vm.created_at, now)),
        ),
        (
            "updated",
            format!("{} ({} ago)", vm.updated_at, age(&vm.updated_at, now)),
        ),
    ]);
    key_values(&pairs)
}

/// `sha256:0123456789ab`: enough of a digest to tell images apart.
pub fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algo, hex)) => format!("{algo}:{}", hex.get(..12).unwrap_or(hex)),
        None => digest.to_owned(),
    }
}

pub fn image_table(images: &[Image], now: OffsetDateTime) -> String {
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            vec![
                i.reference.clone(),
                short_digest(&i.digest),
                bytes(i.size_bytes),
                or_dash(Some(&i.host)),
                age(&i.created_at, now),
            ]
        })
        .collect();
    table(&["REFERENCE", "DIGEST", "SIZE", "HOST", "AGE"], &rows)
}

/// The VMs using an image, as far as the caller may see them: `-` for none.
fn used_by(image: &Image) -> String {
    let hidden = image
        .used_by_count
        .saturating_sub(image.used_by.len() as u64);
    let mut names = image.used_by.join(", ");
    if hidden > 0 {
        if !names.is_empty() {
            names.push_str(" and ");
        }
        names.push_str(&format!("{hidden} VM(s) of other users"));
    }
    or_dash(Some(&names))
}

pub fn image_details(image: &Image, now: OffsetDateTime) -> String {
    let mut pairs = vec![
        ("reference", image.reference.clone()),
        ("digest", image.digest.clone()),
        (
            "size",
            format!("{} ({} bytes)", bytes(image.size_bytes), image.size_bytes),
        ),
        ("host", or_dash(Some(&image.host))),
        ("owner", or_dash(Some(&image.owner))),
        (
            "created",
            format!("{} ({} ago)", image.created_at, age(&image.created_at, now)),
        ),
        ("used by", used_by(image)),
    ];
    let detail = |k: &str| {
        image
            .details
            .as_ref()
            .and_then(|d| d.get(k))
            .filter(|v| !v.is_null())
    };
    if let (Some(os), Some(arch)) = (detail("os"), detail("architecture")) {
        let s = |v: &serde_json::Value| {
            v.as_str()
                .map(String::from)
                .unwrap_or_else(|| v.to_string())
        };
        pairs.push(("platform", format!("{}/{}", s(os), s(arch))));
    }
    if let Some(f) = detail("base_format").and_then(|v| v.as_str()) {
        pairs.push(("base format", f.to_string()));
    }
    if let Some(n) = detail("unpacked_bytes").and_then(|v| v.as_u64()) {
        pairs.push(("unpacked", bytes(n)));
    }
    if let Some(layers) = detail("layers").and_then(|v| v.as_array()) {
        let list: Vec<String> = layers
            .iter()
            .filter_map(|l| l.as_str().map(short_digest))
            .collect();
        pairs.push(("layers", format!("{} ({})", list.len(), list.join(" "))));
    }
    let config: Vec<(String, String)> = match &image.config {
        serde_json::Value::Object(map) => map
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (format!("config.{k}"), v.to_string()))
            .collect(),
        serde_json::Value::Null => Vec::new(),
        other => vec![("config".into(), other.to_string())],
    };
    pairs.extend(config.iter().map(|(k, v)| (k.as_str(), v.clone())));
    key_values(&pairs)
}

/// One event on one line: time, sequence number, VM, state, generation, and the reason.
pub fn event_line(e: &Event) -> String {
    let mut line = format!(
        "{}  #{}  {}  {}  gen {}",
        e.at, e.seq, e.vm_name, e.state, e.generation
    );
    if let Some(r) = e.reason.as_deref().filter(|r| !r.is_empty()) {
        line.push_str("  reason: ");
        line.push_str(r);
    }
    line.push('\n');
    line
}

pub fn health(h: &Health) -> String {
    let hosts = if h.hosts.is_empty() {
        "none".to_owned()
    } else {
        h.hosts.join(", ")
    };
    key_values(&[
        ("status", h.status.clone()),
        ("version", h.version.clone()),
        ("hosts", hosts),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2025-06-01 12:00:00 UTC);

    fn vm(name: &str, state: &str, host: Option<&str>, created_at: &str) -> Vm {
        Vm {
            id: format!("id-{name}"),
            name: name.into(),
            image: "demo/hello:1.0".into(),
            vcpus: 2,
            memory_mib: 512,
            disk_mib: 2048,
            state: state.into(),
            desired_state: "RUNNING".into(),
            generation: 3,
            owner: "ada".into(),
            group: None,
            host: host.map(Into::into),
            reason: None,
            run: Default::default(),
            exposed_ports: vec![],
            address: None,
            ssh_host_key: None,
            created_at: created_at.into(),
            updated_at: created_at.into(),
        }
    }

    #[test]
    fn vm_table_aligns_columns_under_their_headers() {
        let vms = [
            vm("web", "RUNNING", Some("host-a"), "2025-06-01T11:59:55Z"),
            vm("database-1", "PENDING", None, "2025-05-28T12:00:00Z"),
        ];
        let expected = "\
NAME         OWNER   STATE     IMAGE            VCPUS   MEMORY   DISK   HOST     AGE
web          ada     RUNNING   demo/hello:1.0   2       512MiB   2GiB   host-a   5s
database-1   ada     PENDING   demo/hello:1.0   2       512MiB   2GiB   -        4d
";
        assert_eq!(vm_table(&vms, NOW), expected);
    }

    #[test]
    fn an_empty_list_is_just_the_header() {
        assert_eq!(
            vm_table(&[], NOW),
            "NAME   OWNER   STATE   IMAGE   VCPUS   MEMORY   DISK   HOST   AGE\n"
        );
    }

    #[test]
    fn table_lines_have_no_trailing_spaces() {
        let t = table(&["A", "B"], &[vec!["long cell".into(), String::new()]]);
        assert_eq!(t, "A           B\nlong cell\n");
    }

    #[test]
    fn ages_use_the_largest_whole_unit() {
        assert_eq!(age("2025-06-01T11:59:55Z", NOW), "5s");
        assert_eq!(age("2025-06-01T11:56:59.123456Z", NOW), "3m");
        assert_eq!(age("2025-06-01T10:00:00+00:00", NOW), "2h");
        assert_eq!(age("2025-05-28T12:00:00Z", NOW), "4d");
        assert_eq!(
            age("2025-06-01T14:00:00+02:00", NOW),
            "0s",
            "offsets are honoured"
        );
        assert_eq!(
            age("2025-06-01T12:00:10Z", NOW),
            "0s",
            "clock skew is not negative"
        );
        assert_eq!(age("yesterday", NOW), "?");
    }

    #[test]
    fn show_lists_the_reason_only_when_there_is_one() {
        let mut v = vm("web", "FAILED", Some("host-a"), "2025-06-01T11:00:00Z");
        assert!(!vm_details(&v, NOW).contains("reason"));
        v.reason = Some("kernel panic".into());
        let text = vm_details(&v, NOW);
        assert!(text.contains("\nreason:        kernel panic\n"), "{text}");
        assert!(
            text.contains("\ncreated:       2025-06-01T11:00:00Z (1h ago)\n"),
            "{text}"
        );
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(mib(512), "512MiB");
        assert_eq!(mib(4096), "4GiB");
        assert_eq!(mib(1536), "1536MiB");
        assert_eq!(bytes(830), "830B");
        assert_eq!(bytes(1536), "1.5KiB");
        assert_eq!(bytes(12_900_000), "12.3MiB");
    }

    #[test]
    fn image_show_spells_out_the_config() {
        let image = Image {
            reference: "demo/hello:1.0".into(),
            digest: "sha256:0123456789abcdef".into(),
            size_bytes: 2048,
            config: serde_json::json!({ "cmd": ["/hello"], "user": null }),
            host: "host-a".into(),
            created_at: "2025-06-01T11:00:00Z".into(),
            owner: "alice".into(),
            used_by: vec!["alice:web".into()],
            used_by_count: 2,
            details: Some(serde_json::json!({
                "os": "linux", "architecture": "amd64", "base_format": "erofs",
                "layers": ["sha256:aaaaaaaaaaaaaaaaaaaaaaaa"]
            })),
        };
        let text = image_details(&image, NOW);
        assert!(text.contains("owner:"), "{text}");
        assert!(
            text.contains("linux/amd64") && text.contains("erofs"),
            "{text}"
        );
        assert!(
            text.contains("alice:web and 1 VM(s) of other users\n"),
            "{text}"
        );
        assert!(text.contains("config.cmd:  [\"/hello\"]\n"), "{text}");
        assert!(!text.contains("config.user"), "{text}");
        assert!(image_table(&[image], NOW).contains("sha256:0123456789ab "));
    }

    #[test]
    fn an_event_is_one_line() {
        let e = Event {
            seq: 42,
            vm_id: "id".into(),
            vm_name: "web".into(),
            state: "FAILED".into(),
            generation: 3,
            reason: Some("oom".into()),
            at: "2025-06-01T12:00:00Z".into(),
        };
        assert_eq!(
            event_line(&e),
            "2025-06-01T12:00:00Z  #42  web  FAILED  gen 3  reason: oom\n"
        );
    }
}
