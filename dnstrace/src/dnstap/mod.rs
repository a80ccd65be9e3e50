//! dnstap, as dnstrace writes it (`--dnstap`) and reads it back
//! (`dnstrace analyze`): the protobuf schema, Frame Streams, and sending to
//! a collector. The process travels in `extra` as the key=value text of
//! `crate::identity` (docs/formats.md).

pub mod frame_streams;
pub mod proto;
pub mod stream;

/// The Frame Streams content type of dnstap.
pub const CONTENT_TYPE: &str = "protobuf:dnstap.Dnstap";
