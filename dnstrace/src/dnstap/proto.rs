//! The dnstap protobuf schema (dnstap.proto, package `dnstap`), as prost
//! structs written by hand so that the build needs no protoc. Field numbers
//! and enum values are the schema's. Fields dnstrace neither writes nor reads
//! (`query_zone`, `policy`, `http_protocol`) are left out: prost skips
//! unknown fields when decoding.

/// The top-level dnstap record: one per Frame Streams data frame.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dnstap {
    /// Who generated the record; dnstrace puts the process here.
    #[prost(bytes = "vec", optional, tag = "1")]
    pub identity: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub version: Option<Vec<u8>>,
    /// Free-form annotation; dnstrace's key=value process text.
    #[prost(bytes = "vec", optional, tag = "3")]
    pub extra: Option<Vec<u8>>,
    #[prost(message, optional, tag = "14")]
    pub message: Option<Message>,
    #[prost(enumeration = "DnstapType", required, tag = "15")]
    pub r#type: i32,
}

/// Which payload a [`Dnstap`] carries; only messages are defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
pub enum DnstapType {
    Message = 1,
}

/// A wire-format DNS message and where and when it was seen.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    #[prost(enumeration = "MessageType", required, tag = "1")]
    pub r#type: i32,
    #[prost(enumeration = "SocketFamily", optional, tag = "2")]
    pub socket_family: Option<i32>,
    #[prost(enumeration = "SocketProtocol", optional, tag = "3")]
    pub socket_protocol: Option<i32>,
    /// The initiator's (client's) address: 4 or 16 octets.
    #[prost(bytes = "vec", optional, tag = "4")]
    pub query_address: Option<Vec<u8>>,
    /// The responder's (server's) address.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub response_address: Option<Vec<u8>>,
    #[prost(uint32, optional, tag = "6")]
    pub query_port: Option<u32>,
    #[prost(uint32, optional, tag = "7")]
    pub response_port: Option<u32>,
    #[prost(uint64, optional, tag = "8")]
    pub query_time_sec: Option<u64>,
    #[prost(fixed32, optional, tag = "9")]
    pub query_time_nsec: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "10")]
    pub query_message: Option<Vec<u8>>,
    #[prost(uint64, optional, tag = "12")]
    pub response_time_sec: Option<u64>,
    #[prost(fixed32, optional, tag = "13")]
    pub response_time_nsec: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "14")]
    pub response_message: Option<Vec<u8>>,
}

/// Which end of which exchange a message was seen at. Queries have odd
/// values and responses even ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
pub enum MessageType {
    AuthQuery = 1,
    AuthResponse = 2,
    ResolverQuery = 3,
    ResolverResponse = 4,
    ClientQuery = 5,
    ClientResponse = 6,
    ForwarderQuery = 7,
    ForwarderResponse = 8,
    StubQuery = 9,
    StubResponse = 10,
    ToolQuery = 11,
    ToolResponse = 12,
    UpdateQuery = 13,
    UpdateResponse = 14,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
pub enum SocketFamily {
    Inet = 1,
    Inet6 = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
pub enum SocketProtocol {
    Udp = 1,
    Tcp = 2,
    Dot = 3,
    Doh = 4,
    DnsCryptUdp = 5,
    DnsCryptTcp = 6,
    Doq = 7,
}
