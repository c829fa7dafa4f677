//! The two host ↔ guest encodings of `proto/pitwall/v1/agent.proto`:
//!
//! - the config disk: 8 bytes magic `PWCONF01`, a little-endian `u32` length, then the
//!   prost-encoded [`GuestConfig`] (the host zero-pads the disk to a block multiple);
//! - agent frames: each message prefixed by its length as a protobuf varint (prost's
//!   length-delimited encoding). [`FrameReader`] reassembles them from a byte stream.

use pitwall_proto::v1::GuestConfig;
use prost::Message;

use crate::err;
use crate::error::Result;

pub const CONFIG_MAGIC: &[u8; 8] = b"PWCONF01";
/// Magic plus the length field.
pub const CONFIG_HEADER_LEN: usize = 12;
/// A config larger than this is refused rather than read into memory.
pub const MAX_CONFIG_LEN: usize = 1 << 20;
/// Agent frames larger than this are a protocol error.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// The body length announced by a config-disk header, or `None` when `head` does not start
/// with the magic.
pub fn config_len(head: &[u8]) -> Option<usize> {
    if head.len() < CONFIG_HEADER_LEN || &head[..8] != CONFIG_MAGIC {
        return None;
    }
    let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    Some(len as usize)
}

/// Decode a config disk from its first bytes (at least header plus body).
pub fn decode_config(disk: &[u8]) -> Result<GuestConfig> {
    let len = config_len(disk).ok_or_else(|| err!("no PWCONF01 magic"))?;
    if len > MAX_CONFIG_LEN {
        return Err(err!("config length {len} exceeds {MAX_CONFIG_LEN} bytes"));
    }
    let body = disk
        .get(CONFIG_HEADER_LEN..CONFIG_HEADER_LEN + len)
        .ok_or_else(|| err!("config announces {len} bytes but the disk is shorter"))?;
    GuestConfig::decode(body).map_err(|e| err!("config does not decode as GuestConfig: {e}"))
}

/// Reassembles length-delimited prost messages from the bytes of a stream.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Forget a partial frame (the peer went away mid-frame).
    pub fn reset(&mut self) {
        self.buf.clear();
    }

    /// The next complete message, `Ok(None)` while more bytes are needed. An error means the
    /// stream is corrupt; the caller should [`reset`](Self::reset).
    pub fn next_frame<M: Message + Default>(&mut self) -> Result<Option<M>> {
        let Some((prefix, len)) = split_varint(&self.buf)? else {
            return Ok(None);
        };
        if len > MAX_FRAME_LEN {
            return Err(err!("agent frame of {len} bytes exceeds {MAX_FRAME_LEN}"));
        }
        if self.buf.len() < prefix + len {
            return Ok(None);
        }
        let msg = M::decode(&self.buf[prefix..prefix + len]);
        self.buf.drain(..prefix + len);
        msg.map(Some)
            .map_err(|e| err!("agent frame does not decode: {e}"))
    }
}

/// Parse a varint at the start of `buf`: `(bytes used, value)`, `None` when incomplete.
fn split_varint(buf: &[u8]) -> Result<Option<(usize, usize)>> {
    let mut value: u64 = 0;
    for (i, byte) in buf.iter().enumerate() {
        if i >= 10 {
            return Err(err!("agent frame length is not a valid varint"));
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let value = usize::try_from(value).map_err(|_| err!("agent frame too long"))?;
            return Ok(Some((i + 1, value)));
        }
    }
    if buf.len() >= 10 {
        return Err(err!("agent frame length is not a valid varint"));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pitwall_proto::v1::{agent_request, AgentRequest, Ping, Shutdown};

    fn encoded(cfg: &GuestConfig) -> Vec<u8> {
        let body = cfg.encode_to_vec();
        let mut disk = CONFIG_MAGIC.to_vec();
        disk.extend_from_slice(&(body.len() as u32).to_le_bytes());
        disk.extend_from_slice(&body);
        disk.resize(4096, 0);
        disk
    }

    #[test]
    fn config_disk_decodes_to_the_written_config() {
        let cfg = GuestConfig {
            vm_id: "vm-1".into(),
            argv: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            base_label: "pw-base".into(),
            ..Default::default()
        };
        assert_eq!(decode_config(&encoded(&cfg)).unwrap(), cfg);
    }

    #[test]
    fn a_disk_without_magic_is_not_a_config_disk() {
        let mut disk = vec![0u8; 4096];
        assert_eq!(config_len(&disk), None);
        disk[..8].copy_from_slice(b"PWCONF02");
        assert!(decode_config(&disk).is_err());
    }

    #[test]
    fn a_truncated_config_is_refused() {
        let cfg = GuestConfig {
            hostname: "h".repeat(100),
            ..Default::default()
        };
        let disk = encoded(&cfg);
        assert!(decode_config(&disk[..50]).is_err());
    }

    #[test]
    fn frames_are_reassembled_from_arbitrary_chunks() {
        let msgs = [
            AgentRequest {
                id: 0,
                request: Some(agent_request::Request::Ping(Ping {})),
            },
            AgentRequest {
                id: 0,
                request: Some(agent_request::Request::Shutdown(Shutdown {
                    grace_ms: 300_000,
                })),
            },
        ];
        let mut stream = Vec::new();
        for m in &msgs {
            stream.extend(m.encode_length_delimited_to_vec());
        }
        let mut reader = FrameReader::default();
        let mut got = Vec::new();
        for byte in stream {
            reader.push(&[byte]);
            while let Some(m) = reader.next_frame::<AgentRequest>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn an_oversized_frame_is_an_error() {
        let mut reader = FrameReader::default();
        reader.push(&[0xff, 0xff, 0xff, 0x7f]);
        assert!(reader.next_frame::<AgentRequest>().is_err());
    }
}
