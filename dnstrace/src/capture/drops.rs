//! The drop program: DNS packets the kernel dropped, from the
//! `skb:kfree_skb` tracepoint, which carries the drop reason since Linux
//! 5.17. Before anything loads, the running kernel's BTF gives what the
//! program needs (the tracepoint's arguments, the offsets of the skb,
//! socket, device and namespace fields it reads, the names of the drop
//! reasons); without them drops are not watched, and dnstrace says why.
//! Once attached, a record's reason number becomes the kernel's name for
//! it and its location a kernel symbol (/proc/kallsyms).

use std::{
    collections::HashMap,
    fs,
    io::{BufRead, BufReader, Read, Seek},
    sync::Arc,
};

use aya::{Ebpf, programs::BtfTracePoint};
use btf_rs::{Btf, Type};
use dnstrace_common::{DropConfig, names};

use super::cgroup::{explain, program};

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// What the drop program needs from this kernel, found before it loads.
pub struct DropSupport {
    pub config: DropConfig,
    pub names: DropNames,
}

/// Looks in the kernel's BTF for the tracepoint and the fields the drop
/// program reads; the error says why drops cannot be watched here.
pub fn supported() -> Result<DropSupport, String> {
    let btf = Btf::from_file(VMLINUX_BTF).map_err(|e| format!("no kernel BTF: {e}"))?;
    let arguments = tracepoint_arguments(&btf)
        .ok_or("this kernel's kfree_skb tracepoint gives no drop reason (Linux 5.17 added it)")?;
    let reasons = drop_reasons(&btf);
    let field = |structure: &str, path: &[&str]| {
        field_offset(&btf, structure, path).ok_or_else(|| {
            format!(
                "this kernel's struct {structure} has no {} where the drop program reads it",
                path.join(".")
            )
        })
    };
    let protocol = field("sk_buff", &["protocol"])?;
    let network = field("sk_buff", &["network_header"])?;
    // protocol and network_header are read in one 8-byte load.
    let window = protocol.min(network);
    if protocol.max(network) + 2 - window > 8 {
        return Err("this kernel's sk_buff keeps protocol and network_header apart".into());
    }
    let config = DropConfig {
        skb_head: field("sk_buff", &["head"])?,
        skb_headers: window,
        protocol_shift: (protocol - window) * 8,
        network_shift: (network - window) * 8,
        skb_tail: field("sk_buff", &["tail"])?,
        skb_sk: field("sk_buff", &["sk"])?,
        skb_dev: field("sk_buff", &["dev"])?,
        sock_cookie: field("sock", &["__sk_common", "skc_cookie"])?,
        sock_net: field("sock", &["__sk_common", "skc_net"])?,
        dev_net: field("net_device", &["nd_net"])?,
        net_inum: field("net", &["ns", "inum"])?,
        consumed_reason: reasons
            .iter()
            .find(|&(_, name)| &**name == "SKB_CONSUMED")
            .map_or(u32::MAX, |(value, _)| *value),
        // (void *ctx, skb, location, reason[, rx_sk])
        has_rx_sk: u32::from(arguments >= 5),
        _padding: 0,
    };
    // Freed before the symbols are read: the parse is the agent's peak.
    drop(btf);
    Ok(DropSupport {
        config,
        names: DropNames {
            reasons,
            symbols: KernelSymbols::read(),
            locations: HashMap::new(),
        },
    })
}

/// Loads and attaches the drop program.
pub fn attach(ebpf: &mut Ebpf, btf: &aya::Btf) -> Result<(), String> {
    let name = names::KFREE_SKB;
    let program: &mut BtfTracePoint = program(ebpf, name)?;
    program
        .load(names::KFREE_SKB_TRACEPOINT, btf)
        .map_err(|e| explain(name, e))?;
    program.attach().map_err(|e| explain(name, e))?;
    Ok(())
}

/// How many arguments the tracepoint's BPF programs get (the first is the
/// tracepoint's context), if the tracepoint has the drop reason.
fn tracepoint_arguments(btf: &Btf) -> Option<usize> {
    let typedef = format!("btf_trace_{}", names::KFREE_SKB_TRACEPOINT);
    let types = btf.resolve_types_by_name(&typedef).ok()?;
    let Some(Type::Typedef(typedef)) = types.first() else {
        return None;
    };
    let Type::Ptr(pointer) = btf.resolve_chained_type(typedef).ok()? else {
        return None;
    };
    let Type::FuncProto(prototype) = btf.resolve_chained_type(&pointer).ok()? else {
        return None;
    };
    let reason = prototype.parameters.get(3)?;
    let Type::Enum(_) = btf.resolve_chained_type(reason).ok()? else {
        return None;
    };
    Some(prototype.parameters.len())
}

/// `enum skb_drop_reason`, value → name, without the common prefix.
fn drop_reasons(btf: &Btf) -> HashMap<u32, Arc<str>> {
    let types = btf
        .resolve_types_by_name("skb_drop_reason")
        .unwrap_or_default();
    let Some(Type::Enum(reasons)) = types.into_iter().find(|t| matches!(t, Type::Enum(_))) else {
        return HashMap::new();
    };
    reasons
        .members
        .iter()
        .filter_map(|member| {
            let name = btf.resolve_name(member).ok()?;
            let name = name.strip_prefix("SKB_DROP_REASON_").unwrap_or(&name);
            Some((member.val(), name.into()))
        })
        .collect()
}

/// Byte offset of `path` (a field, then fields within it) in `structure`;
/// fields inside anonymous structs and unions are found too.
fn field_offset(btf: &Btf, structure: &str, path: &[&str]) -> Option<u32> {
    let mut current = btf
        .resolve_types_by_name(structure)
        .ok()?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))?;
    let mut bits = 0;
    for name in path {
        let (offset, field_type) = member(btf, &current, name)?;
        bits += offset;
        current = field_type;
    }
    (bits % 8 == 0).then_some(bits / 8)
}

/// A member's bit offset and type (typedefs and qualifiers removed).
fn member(btf: &Btf, aggregate: &Type, name: &str) -> Option<(u32, Type)> {
    let (Type::Struct(aggregate) | Type::Union(aggregate)) = aggregate else {
        return None;
    };
    for field in &aggregate.members {
        let field_name = btf.resolve_name(field).unwrap_or_default();
        let field_type = unqualified(btf, btf.resolve_chained_type(field).ok()?)?;
        if field_name == name {
            return Some((field.bit_offset(), field_type));
        }
        if field_name.is_empty()
            && let Some((offset, found)) = member(btf, &field_type, name)
        {
            return Some((field.bit_offset() + offset, found));
        }
    }
    None
}

fn unqualified(btf: &Btf, mut ty: Type) -> Option<Type> {
    // Bounded: BTF chains are short, and a cycle must not hang us.
    for _ in 0..16 {
        ty = match &ty {
            Type::Typedef(inner) => btf.resolve_chained_type(inner).ok()?,
            Type::Const(inner) | Type::Volatile(inner) | Type::Restrict(inner) => {
                btf.resolve_chained_type(inner).ok()?
            }
            Type::TypeTag(inner) => btf.resolve_chained_type(inner).ok()?,
            _ => return Some(ty),
        };
    }
    None
}

/// Names for what a drop record holds as numbers.
pub struct DropNames {
    reasons: HashMap<u32, Arc<str>>,
    symbols: KernelSymbols,
    /// The places named so far, shared: a flood of drops comes from a few
    /// places, and each drop is held with its lookup.
    locations: HashMap<u64, Arc<str>>,
}

/// Past this many places named, the cache starts over rather than grow.
const MAX_LOCATIONS: usize = 4096;

impl DropNames {
    /// The kernel's name of a drop reason (`NETFILTER_DROP`), or its number.
    pub fn reason(&self, value: u32) -> Arc<str> {
        self.reasons
            .get(&value)
            .cloned()
            .unwrap_or_else(|| value.to_string().into())
    }

    /// `function+0x1c`, or the address when /proc/kallsyms hides it.
    pub fn location(&mut self, address: u64) -> Arc<str> {
        if let Some(name) = self.locations.get(&address) {
            return Arc::clone(name);
        }
        if self.locations.len() >= MAX_LOCATIONS {
            self.locations.clear();
        }
        let name: Arc<str> = self.symbols.name(address).into();
        self.locations.insert(address, Arc::clone(&name));
        name
    }
}

/// Kernel text symbols, sorted by address. A kernel has over 100,000; only
/// their addresses are held (1.4 MiB for 121,056 here, against 4.8 MiB
/// with their names), each with its line in /proc/kallsyms, where a place's
/// name is read when it is first named (the kernel writes the file out to
/// that line: 50 ms for all of it here). Drops come from a few places,
/// each named once (`DropNames::locations`).
struct KernelSymbols<File = fs::File> {
    /// Opened at start: the kernel decides at open whether the file shows
    /// addresses, and the agent keeps no CAP_SYSLOG after attaching.
    file: Option<File>,
    addresses: Vec<u64>,
    lines: Vec<u32>,
}

impl KernelSymbols {
    /// Without privileges the file shows every address as 0; then none are
    /// kept.
    fn read() -> Self {
        match fs::File::open("/proc/kallsyms") {
            Ok(file) => Self::index(file),
            Err(_) => Self::index_of_none(),
        }
    }
}

impl<File: Read + Seek> KernelSymbols<File> {
    fn index_of_none() -> Self {
        Self {
            file: None,
            addresses: Vec::new(),
            lines: Vec::new(),
        }
    }

    /// One symbol per address: the first, as the kernel's own lookup picks
    /// (`memcpy`, not its alias `__pi_memcpy`). A read that fails part way
    /// keeps nothing, so that no place is named after a wrong symbol.
    fn index(mut file: File) -> Self {
        let mut symbols = Self::index_of_none();
        if file.rewind().is_err() {
            return symbols;
        }
        let mut by_address = Vec::new();
        let mut text = BufReader::new(&mut file);
        let mut line = Vec::new();
        for number in 0u32.. {
            line.clear();
            match text.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if let Some((address, _)) = text_symbol(&line) {
                        by_address.push((address, number));
                    }
                }
                Err(_) => return symbols,
            }
        }
        // Sorted by address, then by place in the file.
        by_address.sort_unstable();
        by_address.dedup_by_key(|&mut (address, _)| address);
        (symbols.addresses, symbols.lines) = by_address.into_iter().unzip();
        // Kept open only to name places of the symbols indexed.
        symbols.file = (!symbols.addresses.is_empty()).then_some(file);
        symbols
    }

    fn name(&mut self, address: u64) -> String {
        let Some(index) = self.symbol_before(address) else {
            return format!("{address:#x}");
        };
        let named = match self.name_at(index) {
            Some(name) => Some((name, self.addresses[index])),
            // A module came or went since: the lines moved.
            None => self.file.take().and_then(|file| {
                *self = Self::index(file);
                let index = self.symbol_before(address)?;
                Some((self.name_at(index)?, self.addresses[index]))
            }),
        };
        match named {
            Some((name, start)) => format!("{name}+{:#x}", address - start),
            None => format!("{address:#x}"),
        }
    }

    fn symbol_before(&self, address: u64) -> Option<usize> {
        let after = self.addresses.partition_point(|&start| start <= address);
        after.checked_sub(1)
    }

    /// The name on the symbol's line, if that line still holds it.
    fn name_at(&mut self, index: usize) -> Option<String> {
        let file = self.file.as_mut()?;
        file.rewind().ok()?;
        let mut text = BufReader::new(file);
        for _ in 0..self.lines[index] {
            text.skip_until(b'\n').ok()?;
        }
        let mut line = Vec::new();
        text.read_until(b'\n', &mut line).ok()?;
        let (address, name) = text_symbol(&line)?;
        (address == self.addresses[index]).then(|| name.to_owned())
    }
}

/// A line's text symbol, `address kind name [module]`, if it is one.
fn text_symbol(line: &[u8]) -> Option<(u64, &str)> {
    let mut fields = std::str::from_utf8(line).ok()?.split_whitespace();
    let (address, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
    let address = u64::from_str_radix(address, 16).ok()?;
    (address != 0 && matches!(kind, "t" | "T")).then_some((address, name))
}

#[cfg(test)]
mod tests {
    use std::io::{self, Write};

    use super::*;

    fn symbols(text: &str) -> KernelSymbols<io::Cursor<Vec<u8>>> {
        KernelSymbols::index(io::Cursor::new(text.as_bytes().to_vec()))
    }

    #[test]
    fn a_location_is_named_by_the_symbol_before_it() {
        let mut symbols = symbols(
            "ffffffff81000000 T _stext\n\
             ffffffff81a00100 t nf_hook_slow\n\
             ffffffff81000100 t out_of_order\n\
             ffffffff81a00300 T udp_queue_rcv_one_skb [foo]\n\
             0000000000000000 D jiffies\n",
        );
        assert_eq!(symbols.name(0xffffffff81000104), "out_of_order+0x4");
        assert_eq!(symbols.name(0xffffffff81a0011c), "nf_hook_slow+0x1c");
        assert_eq!(
            symbols.name(0xffffffff81a00300),
            "udp_queue_rcv_one_skb+0x0"
        );
        assert_eq!(symbols.name(0x1000), "0x1000");
    }

    #[test]
    fn an_address_with_aliases_is_named_by_its_first_symbol() {
        let mut symbols = symbols(
            "ffffffff81c00000 T memcpy\n\
             ffffffff81c00000 T __memcpy\n\
             ffffffff81c00000 T __pi_memcpy\n\
             ffffffff81c00080 T memmove\n",
        );
        assert_eq!(symbols.name(0xffffffff81c00010), "memcpy+0x10");
        assert_eq!(symbols.addresses.len(), 2);
    }

    /// A module loaded after the index was made moves the lines below it:
    /// the index is made again, and the place named all the same.
    #[test]
    fn a_place_is_named_after_kallsyms_changed() {
        let mut symbols = symbols(
            "ffffffff81000000 T _stext\n\
             ffffffff81a00100 t nf_hook_slow\n",
        );
        *symbols.file.as_mut().unwrap().get_mut() = b"ffffffff81000000 T _stext\n\
              ffffffffc0000000 t new_module_function [new]\n\
              ffffffff81a00100 t nf_hook_slow\n"
            .to_vec();
        assert_eq!(symbols.name(0xffffffff81a0011c), "nf_hook_slow+0x1c");
        assert_eq!(symbols.name(0xffffffffc0000004), "new_module_function+0x4");
        // And once it is gone again.
        *symbols.file.as_mut().unwrap().get_mut() = b"ffffffff81000000 T _stext\n\
              ffffffff81a00100 t nf_hook_slow\n"
            .to_vec();
        assert_eq!(symbols.name(0xffffffff81a00120), "nf_hook_slow+0x20");
    }

    /// A line that is not text is passed over; a read that fails keeps
    /// nothing, rather than name later places after the last symbol read.
    #[test]
    fn a_failed_read_of_kallsyms_names_no_place() {
        let bad_line = b"ffffffff81000000 T _stext\nffffffff81000100 t \xff\xfe\n";
        let mut symbols = KernelSymbols::index(io::Cursor::new(bad_line.to_vec()));
        assert_eq!(symbols.name(0xffffffff81000104), "_stext+0x104");

        let text = io::Cursor::new(b"ffffffff81000000 T _stext\n".to_vec());
        let mut symbols = KernelSymbols::index(FailingAtEnd(text));
        assert_eq!(symbols.name(0xffffffff81000104), "0xffffffff81000104");
    }

    /// Reads its text, then fails where it would end.
    struct FailingAtEnd(io::Cursor<Vec<u8>>);

    impl Read for FailingAtEnd {
        fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            match self.0.read(buffer)? {
                0 => Err(io::Error::other("read failed")),
                read => Ok(read),
            }
        }
    }

    impl Seek for FailingAtEnd {
        fn seek(&mut self, position: io::SeekFrom) -> io::Result<u64> {
            self.0.seek(position)
        }
    }

    #[test]
    fn a_place_is_named_once_and_the_names_kept_are_bounded() {
        let mut kallsyms = tempfile::tempfile().unwrap();
        kallsyms
            .write_all(b"ffffffff81a00100 t nf_hook_slow\n")
            .unwrap();
        let mut names = DropNames {
            reasons: HashMap::new(),
            symbols: KernelSymbols::index(kallsyms),
            locations: HashMap::new(),
        };
        let first = names.location(0xffffffff81a0018d);
        assert_eq!(&*first, "nf_hook_slow+0x8d");
        assert!(Arc::ptr_eq(&first, &names.location(0xffffffff81a0018d)));
        for offset in 0..2 * MAX_LOCATIONS as u64 {
            let name = names.location(0xffffffff81a00100 + offset);
            assert_eq!(*name, format!("nf_hook_slow+{offset:#x}"));
            assert!(names.locations.len() <= MAX_LOCATIONS);
        }
    }

    /// Where this kernel's /proc/kallsyms shows addresses (to root).
    #[test]
    fn a_place_in_this_kernel_is_named() {
        let mut symbols = KernelSymbols::read();
        let Some(&last) = symbols.addresses.last() else {
            return;
        };
        let name = symbols.name(last + 1);
        assert!(name.ends_with("+0x1") && !name.starts_with("0x"), "{name}");
    }

    /// The offsets the drop program reads come from this kernel's BTF.
    #[test]
    fn this_kernel_offers_what_the_drop_program_reads() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            return;
        }
        let support = supported().unwrap();
        assert!(support.config.skb_head > 0);
        assert_eq!(&*support.names.reason(2), "NOT_SPECIFIED");
        assert!(
            support
                .names
                .reasons
                .values()
                .any(|name| &**name == "NETFILTER_DROP")
        );
    }
}
