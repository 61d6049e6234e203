//! Who may do what: the compiled `[[auth.rules]]` and `admins` of the configuration.
//!
//! The first rule whose pattern matches a repository decides its rights; a repository no rule
//! matches grants nothing. A user holds the rule's `anonymous` and `authenticated` rights plus
//! their own entry (logging in never takes rights away). Admins may do everything everywhere,
//! including reading the catalog.

use std::collections::{HashMap, HashSet};

use super::pattern::{PatternError, RepoPattern};
use crate::config::{AccessRule, Action, AuthConfig};

/// A set of [`Action`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ActionSet(u8);

impl ActionSet {
    /// No action.
    pub(crate) const NONE: ActionSet = ActionSet(0);
    /// Every action.
    pub(crate) const ALL: ActionSet = ActionSet(0b111);

    fn bit(a: Action) -> u8 {
        match a {
            Action::Pull => 1,
            Action::Push => 2,
            Action::Delete => 4,
        }
    }

    /// The set holding `actions`.
    pub(crate) fn of(actions: &[Action]) -> ActionSet {
        ActionSet(actions.iter().fold(0, |acc, &a| acc | Self::bit(a)))
    }

    /// Whether `a` is in the set.
    pub(crate) fn contains(self, a: Action) -> bool {
        self.0 & Self::bit(a) != 0
    }

    /// The actions in both sets.
    pub(crate) fn intersect(self, other: ActionSet) -> ActionSet {
        ActionSet(self.0 & other.0)
    }

    /// The actions in either set.
    pub(crate) fn union(self, other: ActionSet) -> ActionSet {
        ActionSet(self.0 | other.0)
    }

    /// Whether the set is empty.
    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The actions, in `pull, push, delete` order.
    pub(crate) fn actions(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |&a| self.contains(a))
    }
}

/// Who is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Identity<'a> {
    /// No credentials.
    Anonymous,
    /// A user whose password was checked (or whose token names them).
    User(&'a str),
}

#[derive(Debug)]
struct Rule {
    pattern: RepoPattern,
    anonymous: ActionSet,
    authenticated: ActionSet,
    users: HashMap<String, ActionSet>,
}

/// The compiled access rules.
#[derive(Debug)]
pub(crate) struct Policy {
    rules: Vec<Rule>,
    admins: HashSet<String>,
    /// `metrics_users`: who may read `/metrics` besides the admins (`None`: anyone).
    metrics: Option<HashSet<String>>,
}

impl Policy {
    /// Compiles the rules of `cfg`; fails on the first bad pattern.
    pub(crate) fn new(cfg: &AuthConfig) -> Result<Policy, PatternError> {
        let rules = cfg
            .rules
            .iter()
            .map(|r: &AccessRule| {
                Ok(Rule {
                    pattern: RepoPattern::parse(&r.repository)?,
                    anonymous: ActionSet::of(&r.anonymous),
                    authenticated: ActionSet::of(&r.authenticated),
                    users: r
                        .users
                        .iter()
                        .map(|(u, a)| (u.clone(), ActionSet::of(a)))
                        .collect(),
                })
            })
            .collect::<Result<_, PatternError>>()?;
        Ok(Policy {
            rules,
            admins: cfg.admins.iter().cloned().collect(),
            metrics: cfg
                .metrics_users
                .as_ref()
                .map(|users| users.iter().cloned().collect()),
        })
    }

    /// Every user name the policy mentions (to warn about names missing from htpasswd).
    pub(crate) fn named_users(&self) -> impl Iterator<Item = &str> {
        self.admins
            .iter()
            .chain(self.metrics.iter().flatten())
            .chain(self.rules.iter().flat_map(|r| r.users.keys()))
            .map(String::as_str)
    }

    /// Whether `GET /metrics` needs credentials (`metrics_users` is set).
    pub(crate) fn metrics_restricted(&self) -> bool {
        self.metrics.is_some()
    }

    /// Whether `who` may read `GET /metrics`.
    pub(crate) fn may_read_metrics(&self, who: Identity<'_>) -> bool {
        match &self.metrics {
            None => true,
            Some(users) => {
                self.is_admin(who) || matches!(who, Identity::User(u) if users.contains(u))
            }
        }
    }

    /// Whether `who` is an admin.
    pub(crate) fn is_admin(&self, who: Identity<'_>) -> bool {
        matches!(who, Identity::User(u) if self.admins.contains(u))
    }

    /// What `who` may do to the repository `repo`.
    pub(crate) fn allowed(&self, who: Identity<'_>, repo: &str) -> ActionSet {
        if self.is_admin(who) {
            return ActionSet::ALL;
        }
        let Some(rule) = self.rules.iter().find(|r| r.pattern.matches(repo)) else {
            return ActionSet::NONE;
        };
        match who {
            Identity::Anonymous => rule.anonymous,
            Identity::User(u) => rule
                .anonymous
                .union(rule.authenticated)
                .union(rule.users.get(u).copied().unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::Action::{Delete, Pull, Push};

    fn rule(
        repo: &str,
        anon: &[Action],
        authd: &[Action],
        users: &[(&str, &[Action])],
    ) -> AccessRule {
        AccessRule {
            repository: repo.to_owned(),
            anonymous: anon.to_vec(),
            authenticated: authd.to_vec(),
            users: users
                .iter()
                .map(|(u, a)| (u.to_string(), a.to_vec()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn policy() -> Policy {
        Policy::new(&AuthConfig {
            admins: vec!["root".to_owned()],
            rules: vec![
                rule("public/secret", &[], &[], &[("alice", &[Pull])]),
                rule("public/**", &[Pull], &[], &[("alice", &[Push, Delete])]),
                rule("team/*", &[], &[Pull], &[("bob", &[Push])]),
            ],
            ..AuthConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn first_matching_rule_decides() {
        let p = policy();
        let anon = Identity::Anonymous;
        let alice = Identity::User("alice");
        assert_eq!(p.allowed(anon, "public/x"), ActionSet::of(&[Pull]));
        assert_eq!(p.allowed(alice, "public/x"), ActionSet::ALL);
        // The earlier, narrower rule wins over `public/**`.
        assert_eq!(p.allowed(anon, "public/secret"), ActionSet::NONE);
        assert_eq!(p.allowed(alice, "public/secret"), ActionSet::of(&[Pull]));
    }

    #[test]
    fn users_add_to_anonymous_and_authenticated_rights() {
        let p = policy();
        assert_eq!(
            p.allowed(Identity::User("carol"), "team/app"),
            ActionSet::of(&[Pull])
        );
        assert_eq!(
            p.allowed(Identity::User("bob"), "team/app"),
            ActionSet::of(&[Pull, Push])
        );
        assert_eq!(p.allowed(Identity::Anonymous, "team/app"), ActionSet::NONE);
        assert_eq!(
            p.allowed(Identity::User("carol"), "public/x"),
            ActionSet::of(&[Pull])
        );
    }

    #[test]
    fn no_match_denies_and_admins_may_do_everything() {
        let p = policy();
        assert_eq!(
            p.allowed(Identity::User("alice"), "elsewhere"),
            ActionSet::NONE
        );
        assert_eq!(p.allowed(Identity::Anonymous, "team/a/b"), ActionSet::NONE);
        assert_eq!(
            p.allowed(Identity::User("root"), "elsewhere"),
            ActionSet::ALL
        );
        assert!(p.is_admin(Identity::User("root")));
        assert!(!p.is_admin(Identity::User("alice")));
        assert!(!p.is_admin(Identity::Anonymous));
    }

    #[test]
    fn action_sets() {
        let s = ActionSet::of(&[Push, Pull, Push]);
        assert!(s.contains(Pull) && s.contains(Push) && !s.contains(Delete));
        assert_eq!(s.actions().collect::<Vec<_>>(), vec![Pull, Push]);
        assert_eq!(
            s.intersect(ActionSet::of(&[Push, Delete])),
            ActionSet::of(&[Push])
        );
        assert!(ActionSet::NONE.is_empty() && !s.is_empty());
    }

    #[test]
    fn a_bad_pattern_fails_compilation() {
        let cfg = AuthConfig {
            rules: vec![rule("Bad/*", &[Pull], &[], &[])],
            ..AuthConfig::default()
        };
        assert!(Policy::new(&cfg).is_err());
    }
}
