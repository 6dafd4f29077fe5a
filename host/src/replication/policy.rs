//! Which plugins of other nodes this node replicates, and when.

use std::path::PathBuf;
use std::str::FromStr;

use crate::fabric::modules::Offer;

/// When accepted plugins are fetched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Never (the default): calls go to the nodes that serve the plugin.
    #[default]
    Off,
    /// As soon as the catalog shows it.
    Eager,
    /// At the first call for one of its commands that no local plugin serves.
    OnDemand,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "off" => Ok(Mode::Off),
            "eager" => Ok(Mode::Eager),
            "on-demand" => Ok(Mode::OnDemand),
            other => Err(format!("`{other}` is not a replication mode (off, eager, on-demand)")),
        }
    }
}

/// One rule of what is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accept {
    /// `*`: every plugin.
    Any,
    /// `tenant:ID`: the plugins of a tenant.
    Tenant(String),
    /// `plugin:NAME`: a plugin by name (`NAME` or `TENANT/NAME`).
    Plugin(String),
    /// `tag:TAG`: plugins with a command carrying the tag.
    Tag(String),
}

impl FromStr for Accept {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let rule = match text.split_once(':') {
            _ if text == "*" => Accept::Any,
            Some(("tenant", id)) if !id.is_empty() => Accept::Tenant(id.to_string()),
            Some(("plugin", name)) if !name.is_empty() => Accept::Plugin(name.to_string()),
            Some(("tag", tag)) if !tag.is_empty() => Accept::Tag(tag.to_string()),
            _ => {
                return Err(format!(
                    "`{text}` is not a replication rule (`*`, `tenant:ID`, `plugin:NAME` or `tag:TAG`)"
                ))
            }
        };
        Ok(rule)
    }
}

/// A node's replication policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub mode: Mode,
    /// A plugin is accepted when any rule matches it; none: nothing is.
    pub accept: Vec<Accept>,
    /// Where fetched modules are kept [default: a directory that lasts as long as the node].
    pub store: Option<PathBuf>,
}

impl Policy {
    /// Whether this node replicates `offer`.
    pub fn accepts(&self, offer: &Offer) -> bool {
        self.mode != Mode::Off
            && self.accept.iter().any(|rule| match rule {
                Accept::Any => true,
                Accept::Tenant(id) => offer.tenant == *id,
                Accept::Plugin(name) => offer.plugin == *name,
                Accept::Tag(tag) => offer.tags.contains(tag),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(plugin: &str, tenant: &str, tags: &[&str]) -> Offer {
        Offer {
            node: "a".into(),
            plugin: plugin.into(),
            digest: "00".into(),
            size: 1,
            tenant: tenant.into(),
            public: false,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            commands: vec!["x.y".into()],
            version: semver::Version::new(1, 0, 0),
        }
    }

    #[test]
    fn rules_parse_and_match() {
        let policy = Policy {
            mode: Mode::Eager,
            accept: ["tenant:acme", "plugin:math", "tag:gpu"]
                .iter()
                .map(|r| r.parse().unwrap())
                .collect(),
            store: None,
        };
        assert!(policy.accepts(&offer("acme/x", "acme", &[])));
        assert!(policy.accepts(&offer("math", "default", &[])));
        assert!(policy.accepts(&offer("render", "default", &["gpu", "cpu"])));
        assert!(!policy.accepts(&offer("render", "default", &["cpu"])));
        assert!("tenant:".parse::<Accept>().is_err());
        assert!("anything".parse::<Accept>().is_err());
        assert_eq!("*".parse::<Accept>(), Ok(Accept::Any));
    }

    #[test]
    fn nothing_is_accepted_by_default_or_when_off() {
        assert!(!Policy::default().accepts(&offer("math", "default", &[])));
        let off = Policy {
            mode: Mode::Off,
            accept: vec![Accept::Any],
            store: None,
        };
        assert!(!off.accepts(&offer("math", "default", &[])));
        let none = Policy {
            mode: Mode::Eager,
            accept: Vec::new(),
            store: None,
        };
        assert!(!none.accepts(&offer("math", "default", &[])));
    }
}
