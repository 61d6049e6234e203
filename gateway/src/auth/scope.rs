//! Token scopes: the grammar clients ask for access in, and the `access` claim tokens carry.
//!
//! A scope is `<type>:<name>:<actions>` (docker's token spec): `repository:team/app:pull,push`,
//! `registry:catalog:*`. The type may carry a class in parentheses (`repository(plugin)`),
//! which is ignored. The name is everything between the first and the last `:` (so a name that
//! includes a `host:port` still parses), the actions a comma-separated list. One `scope`
//! parameter may hold several scopes separated by spaces (OAuth 2 style).
//!
//! What a token grants is the intersection of what was asked for and what the policy allows,
//! per resource; resources of unknown types are dropped, never refused, as distribution does.

use std::collections::BTreeMap;

use flotilla_protocol::RepoName;
use serde::{Deserialize, Serialize};

use super::policy::{ActionSet, Identity, Policy};
use crate::config::Action;

/// One requested scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Actions on one repository; `*` asks for every action.
    Repository {
        /// The repository.
        name: RepoName,
        /// The actions asked for (unknown ones dropped).
        actions: ActionSet,
    },
    /// `registry:catalog:*`, the catalog.
    Catalog,
    /// Something this registry does not know (another type or resource); grants nothing.
    Other,
}

/// Why a scope string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ScopeError {
    /// Not `type:name:actions`.
    #[error("malformed scope {0:?}: expected type:name:actions")]
    Malformed(String),
    /// A repository scope with an invalid name.
    #[error("scope {scope:?}: {reason}")]
    Name {
        /// The scope.
        scope: String,
        /// Why the name is invalid.
        reason: String,
    },
}

impl Scope {
    /// Parses one scope.
    pub(crate) fn parse(text: &str) -> Result<Scope, ScopeError> {
        let malformed = || ScopeError::Malformed(text.to_owned());
        let (kind, rest) = text.split_once(':').ok_or_else(malformed)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(malformed)?;
        if kind.is_empty() || name.is_empty() {
            return Err(malformed());
        }
        let kind = kind.split_once('(').map_or(kind, |(k, _)| k);
        let actions: Vec<&str> = actions.split(',').map(str::trim).collect();
        match kind {
            "repository" => {
                let name = name.parse::<RepoName>().map_err(|e| ScopeError::Name {
                    scope: text.to_owned(),
                    reason: e.to_string(),
                })?;
                let mut set = ActionSet::NONE;
                for a in actions {
                    set = set.union(match a {
                        "*" => ActionSet::ALL,
                        "pull" => ActionSet::of(&[Action::Pull]),
                        "push" => ActionSet::of(&[Action::Push]),
                        "delete" => ActionSet::of(&[Action::Delete]),
                        _ => ActionSet::NONE,
                    });
                }
                Ok(Scope::Repository { name, actions: set })
            }
            "registry" if name == "catalog" && actions.contains(&"*") => Ok(Scope::Catalog),
            _ => Ok(Scope::Other),
        }
    }

    /// Parses every scope in the `scope` parameters `params` (each may hold several, space-separated).
    pub(crate) fn parse_all<'a>(
        params: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<Scope>, ScopeError> {
        params
            .into_iter()
            .flat_map(str::split_whitespace)
            .map(Scope::parse)
            .collect()
    }

    /// The challenge form of a repository scope asking for `actions`.
    pub(crate) fn repository_text(name: &str, actions: ActionSet) -> String {
        let list: Vec<&str> = actions.actions().map(Action::as_str).collect();
        format!("repository:{name}:{}", list.join(","))
    }
}

/// The challenge form of the catalog scope.
pub(crate) const CATALOG_SCOPE: &str = "registry:catalog:*";

/// One entry of a token's `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AccessEntry {
    /// `repository` or `registry`.
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// The repository name, or `catalog`.
    pub(crate) name: String,
    /// The granted actions (`pull`, `push`, `delete`; `*` for the catalog).
    pub(crate) actions: Vec<String>,
}

impl AccessEntry {
    /// Whether this entry grants `action` on repository `name`.
    pub(crate) fn grants(&self, name: &str, action: Action) -> bool {
        self.kind == "repository"
            && self.name == name
            && self.actions.iter().any(|a| a == action.as_str())
    }

    /// Whether this entry grants the catalog.
    pub(crate) fn grants_catalog(&self) -> bool {
        self.kind == "registry" && self.name == "catalog" && self.actions.iter().any(|a| a == "*")
    }
}

/// What a token for `who` asking for `requested` carries: per resource, the requested actions
/// the policy allows. Resources granted nothing are left out; the same repository asked for
/// twice is merged.
pub(crate) fn grant(policy: &Policy, who: Identity<'_>, requested: &[Scope]) -> Vec<AccessEntry> {
    let mut repos: BTreeMap<&str, ActionSet> = BTreeMap::new();
    let mut catalog = false;
    for scope in requested {
        match scope {
            Scope::Repository { name, actions } => {
                let granted = actions.intersect(policy.allowed(who, name.as_str()));
                let slot = repos.entry(name.as_str()).or_default();
                *slot = slot.union(granted);
            }
            Scope::Catalog => catalog |= policy.is_admin(who),
            Scope::Other => {}
        }
    }
    let mut out: Vec<AccessEntry> = repos
        .into_iter()
        .filter(|(_, a)| !a.is_empty())
        .map(|(name, a)| AccessEntry {
            kind: "repository".to_owned(),
            name: name.to_owned(),
            actions: a.actions().map(|a| a.as_str().to_owned()).collect(),
        })
        .collect();
    if catalog {
        out.push(AccessEntry {
            kind: "registry".to_owned(),
            name: "catalog".to_owned(),
            actions: vec!["*".to_owned()],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Action::{Delete, Pull, Push};
    use crate::config::{AccessRule, AuthConfig};

    fn repo(name: &str, actions: &[Action]) -> Scope {
        Scope::Repository {
            name: name.parse().unwrap(),
            actions: ActionSet::of(actions),
        }
    }

    #[test]
    fn parses_the_grammar() {
        assert_eq!(
            Scope::parse("repository:team/app:pull,push").unwrap(),
            repo("team/app", &[Pull, Push])
        );
        assert_eq!(
            Scope::parse("repository:a:*").unwrap(),
            repo("a", &[Pull, Push, Delete])
        );
        assert_eq!(
            Scope::parse("repository(plugin):a:pull").unwrap(),
            repo("a", &[Pull])
        );
        assert_eq!(
            Scope::parse("repository:a:pull,frobnicate").unwrap(),
            repo("a", &[Pull])
        );
        assert_eq!(Scope::parse("repository:a:").unwrap(), repo("a", &[]));
        assert_eq!(Scope::parse("registry:catalog:*").unwrap(), Scope::Catalog);
        assert_eq!(Scope::parse("registry:catalog:pull").unwrap(), Scope::Other);
        assert_eq!(Scope::parse("image:a:pull").unwrap(), Scope::Other);
        for bad in [
            "",
            "repository",
            "repository:a",
            ":a:pull",
            "repository::pull",
        ] {
            assert!(
                matches!(Scope::parse(bad), Err(ScopeError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Scope::parse("repository:Bad/Name:pull"),
            Err(ScopeError::Name { .. })
        ));
        // A host:port inside the name is part of the name (and invalid as a repository).
        assert!(matches!(
            Scope::parse("repository:localhost:5000/a:pull"),
            Err(ScopeError::Name { .. })
        ));
    }

    #[test]
    fn parse_all_splits_on_spaces() {
        let s = Scope::parse_all(["repository:a:pull repository:b:push", "registry:catalog:*"])
            .unwrap();
        assert_eq!(
            s,
            vec![repo("a", &[Pull]), repo("b", &[Push]), Scope::Catalog]
        );
        assert!(Scope::parse_all(["repository:a:pull nonsense"]).is_err());
        assert!(Scope::parse_all([]).unwrap().is_empty());
    }

    #[test]
    fn challenge_text() {
        assert_eq!(
            Scope::repository_text("a/b", ActionSet::of(&[Push, Pull])),
            "repository:a/b:pull,push"
        );
    }

    fn policy() -> Policy {
        Policy::new(&AuthConfig {
            admins: vec!["root".to_owned()],
            rules: vec![AccessRule {
                repository: "team/**".to_owned(),
                anonymous: vec![Pull],
                authenticated: vec![],
                users: [("alice".to_owned(), vec![Pull, Push])]
                    .into_iter()
                    .collect(),
            }],
            ..AuthConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn grants_the_intersection_of_requested_and_allowed() {
        let p = policy();
        let asked = Scope::parse_all([
            "repository:team/app:pull,push,delete",
            "repository:other:pull",
            "registry:catalog:*",
            "repository:team/app:pull",
        ])
        .unwrap();
        let alice = grant(&p, Identity::User("alice"), &asked);
        assert_eq!(
            alice,
            vec![AccessEntry {
                kind: "repository".into(),
                name: "team/app".into(),
                actions: vec!["pull".into(), "push".into()],
            }]
        );
        assert!(alice[0].grants("team/app", Pull) && alice[0].grants("team/app", Push));
        assert!(!alice[0].grants("team/app", Delete) && !alice[0].grants("team/x", Pull));

        let anon = grant(&p, Identity::Anonymous, &asked);
        assert_eq!(anon.len(), 1);
        assert_eq!(anon[0].actions, vec!["pull".to_owned()]);

        let root = grant(&p, Identity::User("root"), &asked);
        assert_eq!(root.len(), 3, "{root:?}");
        assert_eq!(root[0].name, "other");
        assert_eq!(root[1].actions, vec!["pull", "push", "delete"]);
        assert!(root[2].grants_catalog());

        // Asking for nothing grants nothing (docker login asks for no scope at all).
        assert!(grant(&p, Identity::User("alice"), &[]).is_empty());
    }
}
