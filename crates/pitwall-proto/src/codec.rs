//! The envelope around every bus payload: construction, encoding, and decoding that refuses
//! what this build cannot read (unknown schema version, no payload, no message id).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;

use crate::v1::{envelope::Payload, Envelope};

/// Version of the wire contract this build speaks; written into every [`Envelope`] and
/// checked by [`decode_envelope`]. Bumped on incompatible changes only.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtoError {
    #[error("cannot decode the envelope: {0} (not a Pitwall message, or corrupted)")]
    Decode(#[from] prost::DecodeError),
    #[error(
        "envelope {message_id:?} from {sender:?} has schema version {got}, this build reads \
         only version {supported}: upgrade this process (or the sender) so both speak the same \
         contract"
    )]
    UnsupportedSchemaVersion {
        message_id: String,
        sender: String,
        got: u32,
        supported: u32,
    },
    #[error(
        "envelope {message_id:?} from {sender:?} carries no payload (a message type this build \
         does not know, from a newer sender?)"
    )]
    MissingPayload { message_id: String, sender: String },
    #[error("envelope from {sender:?} has no message_id, so it cannot be deduplicated")]
    MissingMessageId { sender: String },
    #[error("{what} is UNSPECIFIED on the wire: the sender must set it")]
    Unspecified { what: &'static str },
    #[error("{what} has the value {value}, which this build does not know")]
    UnknownEnumValue { what: &'static str, value: i32 },
}

impl Envelope {
    /// A new envelope for `payload` at the current [`SCHEMA_VERSION`], with a fresh UUID v4
    /// `message_id` and `timestamp_ms` = now. `sender` is `"control/<replica>"` or
    /// `"host/<host>"`; `correlation_id` ties a reply or status to the command behind it.
    pub fn new(sender: &str, correlation_id: Option<&str>, payload: Payload) -> Envelope {
        Envelope {
            schema_version: SCHEMA_VERSION,
            message_id: uuid::Uuid::new_v4().to_string(),
            correlation_id: correlation_id.unwrap_or_default().to_owned(),
            timestamp_ms: now_ms(),
            sender: sender.to_owned(),
            reply_to: String::new(),
            payload: Some(payload),
        }
    }

    /// Sets the routing key the answer to this message goes to (see
    /// [`routing::reply_key`](crate::routing::reply_key)).
    #[must_use]
    pub fn with_reply_to(mut self, routing_key: impl Into<String>) -> Envelope {
        self.reply_to = routing_key.into();
        self
    }

    /// The correlation id, `None` when empty.
    pub fn correlation(&self) -> Option<&str> {
        (!self.correlation_id.is_empty()).then_some(self.correlation_id.as_str())
    }

    /// The reply routing key, `None` when empty.
    pub fn reply_to_key(&self) -> Option<&str> {
        (!self.reply_to.is_empty()).then_some(self.reply_to.as_str())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Encodes an envelope into the bytes a bus message carries.
pub fn encode_envelope(envelope: &Envelope) -> Bytes {
    Bytes::from(envelope.encode_to_vec())
}

/// Decodes a bus payload. Refuses an envelope of another schema version, one without a
/// payload and one without a message id: consumers dead-letter (nack without requeue) what
/// this returns an error for.
pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope, ProtoError> {
    let envelope = Envelope::decode(bytes)?;
    if envelope.schema_version != SCHEMA_VERSION {
        return Err(ProtoError::UnsupportedSchemaVersion {
            message_id: envelope.message_id,
            sender: envelope.sender,
            got: envelope.schema_version,
            supported: SCHEMA_VERSION,
        });
    }
    if envelope.message_id.is_empty() {
        return Err(ProtoError::MissingMessageId {
            sender: envelope.sender,
        });
    }
    if envelope.payload.is_none() {
        return Err(ProtoError::MissingPayload {
            message_id: envelope.message_id,
            sender: envelope.sender,
        });
    }
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{HostHeartbeat, VmStatus};

    fn heartbeat() -> Payload {
        Payload::HostHeartbeat(HostHeartbeat {
            host: "h1".into(),
            vcpus_total: 8,
            lease_ms: 10_000,
            ..Default::default()
        })
    }

    #[test]
    fn new_envelope_carries_version_sender_correlation_and_payload() {
        let env = Envelope::new("host/h1", Some("c-1"), heartbeat());
        assert_eq!(env.schema_version, SCHEMA_VERSION);
        assert_eq!(env.sender, "host/h1");
        assert_eq!(env.correlation(), Some("c-1"));
        assert_eq!(env.reply_to_key(), None);
        assert_eq!(env.payload, Some(heartbeat()));
    }

    #[test]
    fn new_envelope_without_correlation_leaves_it_empty() {
        let env = Envelope::new("host/h1", None, heartbeat());
        assert_eq!(env.correlation_id, "");
        assert_eq!(env.correlation(), None);
    }

    #[test]
    fn new_envelopes_get_distinct_uuid_v4_message_ids() {
        let a = Envelope::new("host/h1", None, heartbeat());
        let b = Envelope::new("host/h1", None, heartbeat());
        assert_ne!(a.message_id, b.message_id);
        let id = uuid::Uuid::parse_str(&a.message_id).expect("message_id is a UUID");
        assert_eq!(id.get_version_num(), 4);
    }

    #[test]
    fn new_envelope_is_stamped_with_the_current_time() {
        let before = now_ms();
        let env = Envelope::new("host/h1", None, heartbeat());
        let after = now_ms();
        assert!(before <= env.timestamp_ms && env.timestamp_ms <= after);
        // Sanity: after 2020-01-01, so it is milliseconds since the Unix epoch.
        assert!(env.timestamp_ms > 1_577_836_800_000);
    }

    #[test]
    fn with_reply_to_sets_the_reply_key() {
        let env =
            Envelope::new("control/r1", None, heartbeat()).with_reply_to("orchestrator.reply.r1");
        assert_eq!(env.reply_to_key(), Some("orchestrator.reply.r1"));
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let env = Envelope::new(
            "host/h1",
            Some("c-9"),
            Payload::VmStatus(VmStatus {
                vm_id: "v".into(),
                state: crate::v1::VmState::Running as i32,
                generation: 3,
                ..Default::default()
            }),
        )
        .with_reply_to("orchestrator.reply.r1");
        let bytes = encode_envelope(&env);
        assert_eq!(decode_envelope(&bytes), Ok(env));
    }

    #[test]
    fn decode_rejects_an_unknown_schema_version() {
        let mut env = Envelope::new("host/h1", None, heartbeat());
        env.schema_version = SCHEMA_VERSION + 1;
        let err = decode_envelope(&encode_envelope(&env)).expect_err("must be refused");
        assert!(matches!(
            err,
            ProtoError::UnsupportedSchemaVersion { got, supported: SCHEMA_VERSION, .. }
                if got == SCHEMA_VERSION + 1
        ));
        let msg = err.to_string();
        assert!(msg.contains("schema version 2"), "{msg}");
        assert!(msg.contains("host/h1"), "{msg}");
    }

    #[test]
    fn decode_rejects_a_missing_schema_version() {
        let mut env = Envelope::new("host/h1", None, heartbeat());
        env.schema_version = 0;
        assert!(matches!(
            decode_envelope(&encode_envelope(&env)),
            Err(ProtoError::UnsupportedSchemaVersion { got: 0, .. })
        ));
    }

    #[test]
    fn decode_rejects_a_missing_payload() {
        let mut env = Envelope::new("host/h1", None, heartbeat());
        env.payload = None;
        let err = decode_envelope(&encode_envelope(&env)).expect_err("must be refused");
        assert!(matches!(err, ProtoError::MissingPayload { .. }));
        assert!(err.to_string().contains("no payload"), "{err}");
    }

    #[test]
    fn decode_rejects_a_missing_message_id() {
        let mut env = Envelope::new("host/h1", None, heartbeat());
        env.message_id.clear();
        assert!(matches!(
            decode_envelope(&encode_envelope(&env)),
            Err(ProtoError::MissingMessageId { .. })
        ));
    }

    #[test]
    fn decode_rejects_garbage() {
        let err = decode_envelope(&[0xff, 0xff, 0xff]).expect_err("not protobuf");
        assert!(matches!(err, ProtoError::Decode(_)));
    }

    #[test]
    fn decode_treats_an_unknown_payload_type_as_missing() {
        // A newer sender's payload type (field 99, length-delimited, empty) is skipped by
        // prost, which leaves `payload` unset: refused, not misread.
        let mut env = Envelope::new("host/h1", None, heartbeat());
        env.payload = None;
        let mut bytes = encode_envelope(&env).to_vec();
        bytes.extend_from_slice(&[0x9a, 0x06, 0x00]); // tag 99, wire type 2, length 0
        assert!(matches!(
            decode_envelope(&bytes),
            Err(ProtoError::MissingPayload { .. })
        ));
    }
}
