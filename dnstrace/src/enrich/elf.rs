//! Just enough of ELF to tell whether an executable has a named section:
//! the header, the section headers and their names, read where they lie.

use std::io;

/// A header table larger than this is not an executable's.
const MAX_SECTIONS: usize = 4096;
const MAX_SECTION_NAMES: u64 = 1 << 20;
const HEADER_LEN: usize = 64;
const SECTION_HEADER_LEN: usize = 64;

/// Whether the 64-bit little-endian ELF file that `read` reads (`len`
/// bytes from an offset) has a section called `name`. Anything else, or a
/// file too short for what its header says, has none.
pub fn has_section(
    read: impl Fn(u64, usize) -> io::Result<Vec<u8>>,
    name: &[u8],
) -> io::Result<bool> {
    let header = read(0, HEADER_LEN)?;
    if header.len() < HEADER_LEN || !header.starts_with(b"\x7fELF\x02\x01") {
        return Ok(false);
    }
    let table_offset = u64_at(&header, 0x28);
    let (entry_len, count, names_index) = (
        usize::from(u16_at(&header, 0x3a)),
        usize::from(u16_at(&header, 0x3c)),
        usize::from(u16_at(&header, 0x3e)),
    );
    if entry_len != SECTION_HEADER_LEN || count > MAX_SECTIONS || names_index >= count {
        return Ok(false);
    }
    let table = read(table_offset, count * SECTION_HEADER_LEN)?;
    if table.len() < count * SECTION_HEADER_LEN {
        return Ok(false);
    }
    let section = |index: usize| &table[index * SECTION_HEADER_LEN..][..SECTION_HEADER_LEN];
    let names_section = section(names_index);
    let names_len = u64_at(names_section, 0x20).min(MAX_SECTION_NAMES);
    let names = read(u64_at(names_section, 0x18), names_len as usize)?;
    Ok((0..count).any(|index| {
        let start = u32_at(section(index), 0) as usize;
        names
            .get(start..)
            .is_some_and(|rest| rest.split(|&byte| byte == 0).next() == Some(name))
    }))
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut le = [0; 4];
    le.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(le)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut le = [0; 8];
    le.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(le)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `file` as the kernel would a file of those bytes.
    fn reader(file: &[u8]) -> impl Fn(u64, usize) -> io::Result<Vec<u8>> + '_ {
        |offset, len| {
            let start = (offset as usize).min(file.len());
            Ok(file[start..(start + len).min(file.len())].to_vec())
        }
    }

    /// An ELF file with sections named `names` (and the names' own).
    fn elf_with(names: &[&str]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut offsets = Vec::new();
        for name in names.iter().chain([&".shstrtab"]) {
            offsets.push(strings.len() as u32);
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
        }
        let count = offsets.len() + 1;
        let strings_at = HEADER_LEN as u64;
        let table_at = strings_at + strings.len() as u64;
        let mut file = vec![0; HEADER_LEN];
        file[..6].copy_from_slice(b"\x7fELF\x02\x01");
        file[0x28..0x30].copy_from_slice(&table_at.to_le_bytes());
        file[0x3a..0x3c].copy_from_slice(&(SECTION_HEADER_LEN as u16).to_le_bytes());
        file[0x3c..0x3e].copy_from_slice(&(count as u16).to_le_bytes());
        file[0x3e..0x40].copy_from_slice(&(count as u16 - 1).to_le_bytes());
        file.extend_from_slice(&strings);
        // Section 0 is the null section; the names' section is last.
        file.extend_from_slice(&[0; SECTION_HEADER_LEN]);
        for (index, offset) in offsets.iter().enumerate() {
            let mut entry = [0; SECTION_HEADER_LEN];
            entry[..4].copy_from_slice(&offset.to_le_bytes());
            if index == offsets.len() - 1 {
                entry[0x18..0x20].copy_from_slice(&strings_at.to_le_bytes());
                entry[0x20..0x28].copy_from_slice(&(strings.len() as u64).to_le_bytes());
            }
            file.extend_from_slice(&entry);
        }
        file
    }

    #[test]
    fn a_named_section_is_found_and_no_other() {
        let go = elf_with(&[".text", ".go.buildinfo", ".data"]);
        assert!(has_section(reader(&go), b".go.buildinfo").unwrap());
        let c = elf_with(&[".text", ".go.buildinfo.not", ".data"]);
        assert!(!has_section(reader(&c), b".go.buildinfo").unwrap());
    }

    #[test]
    fn what_is_not_a_whole_elf_file_has_no_section() {
        let go = elf_with(&[".go.buildinfo"]);
        for cut in [0, 10, HEADER_LEN, go.len() - 1] {
            assert!(
                !has_section(reader(&go[..cut]), b".go.buildinfo").unwrap(),
                "{cut}"
            );
        }
        let mut big_endian = go.clone();
        big_endian[5] = 2;
        assert!(!has_section(reader(&big_endian), b".go.buildinfo").unwrap());
        assert!(!has_section(reader(b"#!/bin/sh\n"), b".go.buildinfo").unwrap());
    }

    /// The test binary itself: an ELF file of this machine, not Go's.
    #[test]
    fn this_test_binary_is_read_and_is_not_go() {
        let myself = std::fs::read("/proc/self/exe").unwrap();
        assert!(has_section(reader(&myself), b".text").unwrap());
        assert!(!has_section(reader(&myself), b".go.buildinfo").unwrap());
    }
}
