//! Pitwall's nftables table (`inet pitwall` by default), applied through `nft -j` (the
//! `nftables` crate). The whole table is rebuilt in one nft transaction (add table, delete
//! it, create it with its chains and rules), so applying is atomic and idempotent, and no
//! other table is ever touched.
//!
//! Rules (`BR` the bridge, `UP` the uplink if configured):
//! - `forward` (filter, policy accept): drop `BR → BR` (VM to VM routed through the host, by
//!   any address); accept established/related `→ BR`; drop anything else `→ BR` (nobody
//!   outside opens connections to VMs); accept `BR → UP` (or `BR →` anything without an
//!   uplink) and drop the rest from `BR`.
//! - `postrouting` (nat): masquerade `ip saddr SUBNET` leaving via `UP` (or via anything but
//!   `BR`).
//! - `input` (filter, policy accept): from `BR`, only replies (established/related: the
//!   host's own connections to VMs, e.g. the terminator's), ICMP (VMs ping their gateway) and
//!   DNS (port 53, for a resolver an operator runs on the gateway) reach the host; every other
//!   packet a VM sends to any of the host's addresses is dropped, so no host service is
//!   exposed to VMs.

use std::borrow::Cow;
use std::path::Path;

use ipnet::Ipv4Net;
use nftables::batch::Batch;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, SetItem, CT,
};
use nftables::helper::NftablesError;
use nftables::schema::{Chain, NfCmd, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use tracing::info;

use crate::NetError;

/// What the table is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSpec {
    pub table: String,
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub uplink: Option<String>,
    pub masquerade: bool,
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn ifname_is(key: MetaKey, op: Operator, name: &str) -> Statement<'static> {
    Statement::Match(Match {
        left: meta(key),
        right: Expression::String(Cow::Owned(name.to_string())),
        op,
    })
}

fn iif(name: &str) -> Statement<'static> {
    ifname_is(MetaKey::Iifname, Operator::EQ, name)
}

fn oif(name: &str) -> Statement<'static> {
    ifname_is(MetaKey::Oifname, Operator::EQ, name)
}

fn ct_established() -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::CT(CT {
            key: "state".into(),
            family: None,
            dir: None,
        })),
        right: Expression::List(vec![
            Expression::String("established".into()),
            Expression::String("related".into()),
        ]),
        op: Operator::IN,
    })
}

fn saddr_in(net: Ipv4Net) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: "ip".into(),
                field: "saddr".into(),
            },
        ))),
        right: Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(Expression::String(Cow::Owned(net.network().to_string()))),
            len: u32::from(net.prefix_len()),
        })),
        op: Operator::EQ,
    })
}

/// `meta l4proto { protos }`.
fn l4proto_in(protos: &[&str]) -> Statement<'static> {
    Statement::Match(Match {
        left: meta(MetaKey::L4proto),
        right: Expression::Named(NamedExpression::Set(
            protos
                .iter()
                .map(|p| SetItem::Element(Expression::String(Cow::Owned(p.to_string()))))
                .collect(),
        )),
        op: Operator::EQ,
    })
}

/// `th dport PORT` (the transport header's destination port, TCP or UDP).
fn dport_is(port: u16) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: "th".into(),
                field: "dport".into(),
            },
        ))),
        right: Expression::Number(u32::from(port)),
        op: Operator::EQ,
    })
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

fn drop_() -> Statement<'static> {
    Statement::Drop(None)
}

/// The nft transaction that replaces the table with the one `spec` describes.
pub fn ruleset(spec: &FirewallSpec) -> Nftables<'static> {
    let family = NfFamily::INet;
    let table_name: Cow<'static, str> = Cow::Owned(spec.table.clone());
    let table = Table {
        family,
        name: table_name.clone(),
        handle: None,
    };
    let mut batch = Batch::new();
    // "add" is a no-op on an existing table, so the "delete" that follows cannot fail.
    batch.add(NfListObject::Table(table.clone()));
    batch.delete(NfListObject::Table(table.clone()));
    batch.add(NfListObject::Table(table));
    let chain = |name: &'static str, ty: NfChainType, hook: NfHook, prio: i32| Chain {
        family,
        table: table_name.clone(),
        name: name.into(),
        _type: Some(ty),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    };
    batch.add(NfListObject::Chain(chain(
        "forward",
        NfChainType::Filter,
        NfHook::Forward,
        0,
    )));
    batch.add(NfListObject::Chain(chain(
        "input",
        NfChainType::Filter,
        NfHook::Input,
        0,
    )));
    batch.add(NfListObject::Chain(chain(
        "postrouting",
        NfChainType::NAT,
        NfHook::Postrouting,
        100,
    )));
    let mut rule = |chain: &'static str, comment: &'static str, expr: Vec<Statement<'static>>| {
        batch.add(NfListObject::Rule(Rule {
            family,
            table: table_name.clone(),
            chain: chain.into(),
            expr: expr.into(),
            comment: Some(comment.into()),
            ..Rule::default()
        }));
    };
    let br = spec.bridge.as_str();
    rule(
        "forward",
        "no VM to VM through the host",
        vec![iif(br), oif(br), drop_()],
    );
    rule(
        "forward",
        "replies to VMs",
        vec![oif(br), ct_established(), accept()],
    );
    rule("forward", "nothing else to VMs", vec![oif(br), drop_()]);
    match &spec.uplink {
        Some(up) => {
            rule(
                "forward",
                "VMs to the uplink",
                vec![iif(br), oif(up), accept()],
            );
            rule("forward", "VMs nowhere else", vec![iif(br), drop_()]);
        }
        None => rule("forward", "VMs out", vec![iif(br), accept()]),
    }
    rule(
        "input",
        "replies to the host's connections to VMs",
        vec![iif(br), ct_established(), accept()],
    );
    rule(
        "input",
        "VMs ping the gateway",
        vec![iif(br), l4proto_in(&["icmp"]), accept()],
    );
    rule(
        "input",
        "VMs ask a resolver on the gateway",
        vec![iif(br), l4proto_in(&["udp", "tcp"]), dport_is(53), accept()],
    );
    rule(
        "input",
        "no other host service for VMs",
        vec![iif(br), drop_()],
    );
    if spec.masquerade {
        let out = match &spec.uplink {
            Some(up) => oif(up),
            None => ifname_is(MetaKey::Oifname, Operator::NEQ, br),
        };
        rule(
            "postrouting",
            "VM egress",
            vec![
                saddr_in(spec.subnet.trunc()),
                out,
                Statement::Masquerade(None),
            ],
        );
    }
    batch.to_nftables()
}

/// The transaction that deletes the table (and nothing else); fails if it does not exist,
/// so [`remove`] adds it first.
fn removal(table: &str) -> Nftables<'static> {
    let t = Table {
        family: NfFamily::INet,
        name: Cow::Owned(table.to_string()),
        handle: None,
    };
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(t.clone()));
    batch.add_cmd(NfCmd::Delete(NfListObject::Table(t)));
    batch.to_nftables()
}

async fn run(nft: &Path, table: &str, doc: &Nftables<'_>) -> Result<(), NetError> {
    let args: [&str; 0] = [];
    nftables::helper::apply_ruleset_with_args_async(doc, Some(nft), args)
        .await
        .map_err(|e| match e {
            NftablesError::NftExecution { inner, .. }
                if inner.kind() == std::io::ErrorKind::NotFound =>
            {
                NetError::NftMissing {
                    program: nft.to_path_buf(),
                    source: inner,
                }
            }
            NftablesError::NftFailed { stderr, .. } => {
                let stderr = stderr.trim().to_string();
                if stderr.contains("Operation not permitted") {
                    NetError::Permission {
                        what: "apply nftables table",
                        name: table.to_string(),
                    }
                } else {
                    NetError::Nft {
                        table: table.to_string(),
                        stderr,
                    }
                }
            }
            other => NetError::Nft {
                table: table.to_string(),
                stderr: other.to_string(),
            },
        })
}

/// Replaces Pitwall's table with the one `spec` describes, atomically.
pub async fn apply(nft: &Path, spec: &FirewallSpec) -> Result<(), NetError> {
    run(nft, &spec.table, &ruleset(spec)).await?;
    info!(table = %spec.table, bridge = %spec.bridge, uplink = ?spec.uplink, "firewall applied");
    Ok(())
}

/// Deletes Pitwall's table if it exists.
pub async fn remove(nft: &Path, table: &str) -> Result<(), NetError> {
    run(nft, table, &removal(table)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(uplink: Option<&str>) -> FirewallSpec {
        FirewallSpec {
            table: "pitwall".into(),
            bridge: "fcbr0".into(),
            subnet: "172.30.0.1/16".parse().expect("net"),
            uplink: uplink.map(str::to_string),
            masquerade: true,
        }
    }

    fn json(s: &FirewallSpec) -> String {
        serde_json::to_string(&ruleset(s)).expect("encode")
    }

    #[test]
    fn rebuilds_only_its_own_table_in_one_transaction() {
        let v: serde_json::Value = serde_json::to_value(ruleset(&spec(None))).expect("encode");
        let cmds = v["nftables"].as_array().expect("array");
        assert_eq!(cmds[0]["add"]["table"]["name"], "pitwall");
        assert_eq!(cmds[1]["delete"]["table"]["name"], "pitwall");
        assert_eq!(cmds[2]["add"]["table"]["name"], "pitwall");
        for c in cmds {
            let obj = c.as_object().and_then(|o| o.values().next()).expect("cmd");
            let inner = obj
                .as_object()
                .and_then(|o| o.values().next())
                .expect("obj");
            let table = inner.get("table").or_else(|| inner.get("name"));
            assert!(
                table == Some(&serde_json::json!("pitwall")),
                "touches only table pitwall: {c}"
            );
        }
    }

    #[test]
    fn masquerades_the_subnet_via_the_uplink() {
        let j = json(&spec(Some("eth0")));
        assert!(j.contains(r#""masquerade":null"#), "{j}");
        assert!(j.contains(r#""addr":"172.30.0.0","len":16"#), "{j}");
        assert!(j.contains(r#""right":"eth0""#), "{j}");
    }

    #[test]
    fn without_uplink_masquerades_anything_leaving_but_the_bridge() {
        let j = json(&spec(None));
        assert!(
            j.contains(r#"{"left":{"meta":{"key":"oifname"}},"right":"fcbr0","op":"!="}"#),
            "{j}"
        );
    }

    #[test]
    fn no_masquerade_when_disabled() {
        let s = FirewallSpec {
            masquerade: false,
            ..spec(None)
        };
        assert!(!json(&s).contains("masquerade"));
    }
}
