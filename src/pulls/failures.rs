//! Failures grouped by image (`registry/repository`) and by node (client address), bounded:
//! at most [`MAX_GROUPS`] of each (the oldest group goes when a new one arrives) and
//! [`MAX_MEMBERS`] nodes per image / images per node.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::Pull;
use crate::failure::ErrorClass;

const MAX_GROUPS: usize = 1_000;
const MAX_MEMBERS: usize = 64;
/// Error messages are upstream-influenced text: keep them short.
const MAX_MESSAGE: usize = 300;

/// `failures` of `/_berth/status`, most recent first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Failures {
    pub by_image: Vec<ImageFailures>,
    pub by_node: Vec<NodeFailures>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageFailures {
    pub image: String,
    pub count: u64,
    /// Client addresses that failed to pull it.
    pub nodes: Vec<String>,
    pub last_error_class: Option<ErrorClass>,
    pub last_error: String,
    pub last_reference: String,
    pub last_status: u16,
    /// Seconds since the Unix epoch.
    pub last_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeFailures {
    pub node: String,
    /// The node's name from `[nodes]`, where berth knows one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub count: u64,
    pub images: Vec<String>,
    pub last_at: u64,
}

#[derive(Default)]
pub(super) struct FailureTable {
    images: HashMap<String, ImageGroup>,
    nodes: HashMap<IpAddr, NodeGroup>,
}

struct ImageGroup {
    count: u64,
    nodes: BTreeMap<String, ()>,
    last_error_class: Option<ErrorClass>,
    last_error: String,
    last_reference: String,
    last_status: u16,
    last_at: SystemTime,
}

struct NodeGroup {
    count: u64,
    images: BTreeMap<String, ()>,
    last_at: SystemTime,
}

trait Aged {
    fn last_at(&self) -> SystemTime;
}

impl Aged for ImageGroup {
    fn last_at(&self) -> SystemTime {
        self.last_at
    }
}

impl Aged for NodeGroup {
    fn last_at(&self) -> SystemTime {
        self.last_at
    }
}

/// Makes room for `key` by dropping the group that failed longest ago.
fn make_room<K: Hash + Eq + Clone, V: Aged>(map: &mut HashMap<K, V>, key: &K) {
    if map.len() < MAX_GROUPS || map.contains_key(key) {
        return;
    }
    if let Some(oldest) = map
        .iter()
        .min_by_key(|(_, v)| v.last_at())
        .map(|(k, _)| k.clone())
    {
        map.remove(&oldest);
    }
}

fn insert_bounded(set: &mut BTreeMap<String, ()>, member: String) {
    if set.len() < MAX_MEMBERS || set.contains_key(&member) {
        set.insert(member, ());
    }
}

impl FailureTable {
    pub(super) fn add(&mut self, pull: &Pull) {
        let image = pull.image();
        let node = pull.client.map(|a| a.to_canonical());
        let message = pull
            .error
            .clone()
            .unwrap_or_else(|| super::status_words(pull.status));
        make_room(&mut self.images, &image);
        let group = self
            .images
            .entry(image.clone())
            .or_insert_with(|| ImageGroup {
                count: 0,
                nodes: BTreeMap::new(),
                last_error_class: None,
                last_error: String::new(),
                last_reference: String::new(),
                last_status: 0,
                last_at: pull.at,
            });
        group.count += 1;
        group.last_error_class = pull.error_class;
        group.last_error = truncate(&message);
        group.last_reference = truncate(&pull.reference);
        group.last_status = pull.status;
        group.last_at = pull.at;
        if let Some(node) = node {
            insert_bounded(&mut group.nodes, node.to_string());
            make_room(&mut self.nodes, &node);
            let group = self.nodes.entry(node).or_insert_with(|| NodeGroup {
                count: 0,
                images: BTreeMap::new(),
                last_at: pull.at,
            });
            group.count += 1;
            group.last_at = pull.at;
            insert_bounded(&mut group.images, image);
        }
    }

    pub(super) fn report(&self) -> Failures {
        let mut by_image: Vec<ImageFailures> = self
            .images
            .iter()
            .map(|(image, g)| ImageFailures {
                image: image.clone(),
                count: g.count,
                nodes: g.nodes.keys().cloned().collect(),
                last_error_class: g.last_error_class,
                last_error: g.last_error.clone(),
                last_reference: g.last_reference.clone(),
                last_status: g.last_status,
                last_at: unix_seconds(g.last_at),
            })
            .collect();
        by_image.sort_by(|a, b| b.last_at.cmp(&a.last_at).then(a.image.cmp(&b.image)));
        let mut by_node: Vec<NodeFailures> = self
            .nodes
            .iter()
            .map(|(node, g)| NodeFailures {
                name: None,
                node: node.to_string(),
                count: g.count,
                images: g.images.keys().cloned().collect(),
                last_at: unix_seconds(g.last_at),
            })
            .collect();
        by_node.sort_by(|a, b| b.last_at.cmp(&a.last_at).then(a.node.cmp(&b.node)));
        Failures { by_image, by_node }
    }
}

pub fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn truncate(text: &str) -> String {
    if text.len() <= MAX_MESSAGE {
        return text.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn groups_are_bounded_and_the_oldest_goes_first() {
        let mut table = FailureTable::default();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for i in 0..(MAX_GROUPS + 10) {
            let pull = Pull {
                at: start + Duration::from_secs(i as u64),
                client: Some(IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8])),
                node: None,
                registry: "docker.io".into(),
                repository: format!("junk/{i}"),
                reference: "x".repeat(10_000),
                kind: "manifest",
                status: 404,
                error_class: Some(ErrorClass::NotFound),
                error: None,
                bytes: 0,
                duration: Duration::ZERO,
                cache: None,
                upstream_attempts: 0,
            };
            table.add(&pull);
        }
        let report = table.report();
        assert_eq!(report.by_image.len(), MAX_GROUPS);
        assert_eq!(report.by_node.len(), MAX_GROUPS);
        assert!(
            report
                .by_image
                .iter()
                .all(|g| g.image != "docker.io/junk/0")
        );
        assert_eq!(
            report.by_image[0].image,
            format!("docker.io/junk/{}", MAX_GROUPS + 9)
        );
        assert!(report.by_image[0].last_reference.len() <= MAX_MESSAGE + 3);
        assert_eq!(report.by_image[0].last_error, "HTTP 404 Not Found");
    }
}
