//! A cgroup v2 child made for one test, removed on drop.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use crate::{is_stale_name, unique_name};

pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn new() -> Self {
        let root = cgroup2_mount();
        // Cgroups left by killed test runs; rmdir fails harmlessly if busy.
        for entry in fs::read_dir(&root).expect("list cgroups").flatten() {
            if is_stale_name(&entry.file_name().to_string_lossy()) {
                let _ = fs::remove_dir(entry.path());
            }
        }
        let path = root.join(unique_name("cgroup"));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup v2 id, which is the directory's inode.
    pub fn id(&self) -> u64 {
        fs::metadata(&self.path).expect("stat cgroup").ino()
    }

    /// A child cgroup named `name` (as a container runtime names its
    /// own), removed on drop; drop it before its parent.
    pub fn child(&self, name: &str) -> Self {
        let path = self.path.join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }

    pub fn add(&self, pid: u32) {
        fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", self.path.display()));
    }
}

impl Default for Cgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // A process that just exited may keep the cgroup busy for a moment.
        // No panics here: this may run while a failing test unwinds.
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::remove_dir(&self.path).is_err() {
            if Instant::now() >= deadline {
                eprintln!("warning: could not remove cgroup {}", self.path.display());
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Where cgroup v2 is mounted: /sys/fs/cgroup on pure v2 hosts,
/// /sys/fs/cgroup/unified next to v1.
fn cgroup2_mount() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            fs.starts_with("cgroup2 ")
                .then(|| PathBuf::from(mount.split(' ').nth(4).expect("mount point field")))
        })
        .expect("cgroup v2 is mounted")
}
