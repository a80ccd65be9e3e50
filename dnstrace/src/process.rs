//! What /proc tells about the processes behind events.

use std::{collections::HashMap, fs};

/// Maps the kernel's network namespace cookies to the inode numbers users
/// know (`ip netns identify`, `ls -l /proc/PID/ns/net`). A cookie never
/// changes meaning while the system runs, so each is looked up only once,
/// through the first process seen in that namespace.
#[derive(Default)]
pub struct Namespaces {
    inode_by_cookie: HashMap<u64, u64>,
}

impl Namespaces {
    pub fn inode(&mut self, cookie: u64, pid: u32) -> Option<u64> {
        if let Some(&inode) = self.inode_by_cookie.get(&cookie) {
            return Some(inode);
        }
        let inode = netns_inode_of(pid)?;
        if cookie != 0 {
            self.inode_by_cookie.insert(cookie, inode);
        }
        Some(inode)
    }
}

/// `readlink /proc/PID/ns/net` is `net:[4026531840]`.
fn netns_inode_of(pid: u32) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let link = link.to_str()?;
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_namespace() {
        let mut namespaces = Namespaces::default();
        let inode = namespaces.inode(0, std::process::id()).expect("own netns");
        assert!(inode > 0);
        assert_eq!(namespaces.inode(0, u32::MAX), None, "no such pid");
    }
}
