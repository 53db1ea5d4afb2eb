//! Kubernetes' own selector cases (apimachinery `pkg/labels/selector_test.go`:
//! `TestSelectorParse`, `TestSelectorMatches`, `TestRequirementConstructor`,
//! `TestToString`, `TestRequirementSelectorMatching`,
//! `TestSetSelectorParser`), run against this parser. Requirements Go
//! builds directly are written here as the selector text they print as.
//! The differences kept are listed in the module docs of `selector.rs`; the
//! one these cases touch is that `y==jkl` prints as `y=jkl`.

use std::collections::BTreeMap;

use crate::selector::{Requirement, Selector};

/// Labels as (key, value) pairs.
type Labels<'a> = &'a [(&'a str, &'a str)];

fn set(pairs: Labels<'_>) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn matches(selector: &str, labels: Labels<'_>) -> bool {
    Selector::parse(selector)
        .unwrap_or_else(|e| panic!("{selector:?} parses: {e}"))
        .matches(&set(labels), &[])
}

/// Requirements in a canonical order with sorted values, as Go's
/// `internalSelector` keeps them (sorted by key; values in a sorted set).
fn canonical(selector: &Selector) -> Vec<Requirement> {
    let mut requirements: Vec<Requirement> = selector
        .requirements
        .iter()
        .cloned()
        .map(|r| match r {
            Requirement::In(k, mut vs) => {
                vs.sort();
                vs.dedup();
                Requirement::In(k, vs)
            }
            Requirement::NotIn(k, mut vs) => {
                vs.sort();
                vs.dedup();
                Requirement::NotIn(k, vs)
            }
            other => other,
        })
        .collect();
    requirements.sort_by(|a, b| a.key().cmp(b.key()));
    requirements
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

#[test]
fn selector_parse() {
    for good in [
        "x=a,y=b,z=c",
        "",
        "x!=a,y=b",
        "x=",
        "x= ",
        "x=,z= ",
        "x= ,z= ",
        "!x",
        "x>1",
        "x>1,z<5",
    ] {
        let parsed = Selector::parse(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        assert_eq!(parsed.to_string(), good.replace(' ', ""), "{good:?}");
    }
    for bad in ["x=a||y=b", "x==a==b", "!x=a", "x<a"] {
        assert!(Selector::parse(bad).is_err(), "{bad:?} must not parse");
    }
}

#[test]
fn deterministic_parse() {
    let one = Selector::parse("x=a,a=x").expect("parses");
    let two = Selector::parse("a=x,x=a").expect("parses");
    assert_eq!(canonical(&one), canonical(&two));
}

#[test]
fn selector_matches() {
    let yes: &[(&str, Labels<'_>)] = &[
        ("", &[("x", "y")]),
        ("x=y", &[("x", "y")]),
        ("x=y,z=w", &[("x", "y"), ("z", "w")]),
        ("x!=y,z!=w", &[("x", "z"), ("z", "a")]),
        ("notin=in", &[("notin", "in")]),
        ("x", &[("x", "z")]),
        ("!x", &[("y", "z")]),
        ("x>1", &[("x", "2")]),
        ("x<1", &[("x", "0")]),
        ("foo=bar", &[("foo", "bar"), ("baz", "blah")]),
        ("baz=blah", &[("foo", "bar"), ("baz", "blah")]),
        ("foo=bar,baz=blah", &[("foo", "bar"), ("baz", "blah")]),
    ];
    for (selector, labels) in yes {
        assert!(matches(selector, labels), "{selector:?} matches {labels:?}");
    }
    let no: &[(&str, Labels<'_>)] = &[
        ("x=z", &[]),
        ("x=y", &[("x", "z")]),
        ("x=y,z=w", &[("x", "w"), ("z", "w")]),
        ("x!=y,z!=w", &[("x", "z"), ("z", "w")]),
        ("x", &[("y", "z")]),
        ("!x", &[("x", "z")]),
        ("x>1", &[("x", "0")]),
        ("x<1", &[("x", "2")]),
        ("foo=blah", &[("foo", "bar"), ("baz", "blah")]),
        ("baz=bar", &[("foo", "bar"), ("baz", "blah")]),
        (
            "foo=bar,foobar=bar,baz=blah",
            &[("foo", "bar"), ("baz", "blah")],
        ),
    ];
    for (selector, labels) in no {
        assert!(
            !matches(selector, labels),
            "{selector:?} does not match {labels:?}"
        );
    }
}

#[test]
fn requirement_constructor() {
    // (selector text, valid)
    let long_key = "a".repeat(254);
    let cases = [
        ("x in (foo)", true),
        ("x notin (foo)", true),
        ("x", true),
        ("!x", true),
        ("1foo in (bar)", true),
        ("1234 in (bar)", true),
        ("y>1", true),
        ("z<6", true),
        ("foo>bar", false),
        ("barz<blah", false),
        (long_key.as_str(), false),
    ];
    for (text, valid) in cases {
        assert_eq!(
            Selector::parse(text).is_ok(),
            valid,
            "{}",
            &text[..text.len().min(20)]
        );
    }
}

#[test]
fn to_string() {
    for (text, printed) in [
        (
            "x in (abc,def),y notin (jkl),z",
            "x in (abc,def),y notin (jkl),z",
        ),
        ("x notin (abc,def),y!=jkl,!z", "x notin (abc,def),y!=jkl,!z"),
        (
            "x notin (abc),y in (jkl,mno),z notin ()",
            "x notin (abc),y in (jkl,mno),z notin ()",
        ),
        // Kubernetes prints `y==jkl` back as written; here it is `y=jkl`.
        ("x=abc,y==jkl,z!=a,z", "x=abc,y=jkl,z!=a,z"),
        ("x>2,y<8,z", "x>2,y<8,z"),
    ] {
        let parsed = Selector::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(parsed.to_string(), printed);
        assert_eq!(Selector::parse(printed).as_ref(), Ok(&parsed));
    }
    // A trailing ',' (an empty requirement) is not a selector.
    assert!(Selector::parse("x in (abc,def),").is_err());
}

#[test]
fn requirement_selector_matching() {
    let cases: &[(Labels<'_>, &str, bool)] = &[
        (
            &[("x", "foo"), ("y", "baz")],
            "x in (foo),y notin (alpha)",
            true,
        ),
        (
            &[("x", "foo"), ("y", "baz")],
            "x in (foo),y in (alpha)",
            false,
        ),
        (&[("y", "")], "x notin (),y", true),
        (&[("y", "")], "!x,y", true),
        (&[("y", "")], "x notin (),!y", false),
        (&[("y", "baz")], "x in ()", false),
        (&[("z", "2")], "z>1", true),
        (&[("z", "v2")], "z>1", false),
    ];
    for (labels, selector, want) in cases {
        assert_eq!(
            matches(selector, labels),
            *want,
            "{selector:?} on {labels:?}"
        );
    }
}

#[test]
fn set_selector_parser() {
    use Requirement::*;
    let exists = |k: &str| Exists(k.to_owned());
    let valid: Vec<(&str, Vec<Requirement>)> = vec![
        ("", vec![]),
        ("\rx", vec![exists("x")]),
        (
            "this-is-a-dns.domain.com/key-with-dash",
            vec![exists("this-is-a-dns.domain.com/key-with-dash")],
        ),
        (
            "this-is-another-dns.domain.com/key-with-dash in (so,what)",
            vec![In(
                "this-is-another-dns.domain.com/key-with-dash".into(),
                strings(&["so", "what"]),
            )],
        ),
        (
            "0.1.2.domain/99 notin (10.10.100.1, tick.tack.clock)",
            vec![NotIn(
                "0.1.2.domain/99".into(),
                strings(&["10.10.100.1", "tick.tack.clock"]),
            )],
        ),
        ("foo  in\t (abc)", vec![In("foo".into(), strings(&["abc"]))]),
        (
            "x notin\n (abc)",
            vec![NotIn("x".into(), strings(&["abc"]))],
        ),
        (
            "x  notin\t\t\t(abc,def)",
            vec![NotIn("x".into(), strings(&["abc", "def"]))],
        ),
        (
            "x in (abc,def)",
            vec![In("x".into(), strings(&["abc", "def"]))],
        ),
        ("x in (abc,)", vec![In("x".into(), strings(&["", "abc"]))]),
        ("x in ()", vec![In("x".into(), strings(&[""]))]),
        (
            "x notin (abc,,def),bar,z in (),w",
            vec![
                exists("bar"),
                exists("w"),
                NotIn("x".into(), strings(&["", "abc", "def"])),
                In("z".into(), strings(&[""])),
            ],
        ),
        (
            "x,y in (a)",
            vec![exists("x"), In("y".into(), strings(&["a"]))],
        ),
        ("x=a", vec![Equals("x".into(), "a".into())]),
        ("x>1", vec![GreaterThan("x".into(), 1)]),
        ("x<7", vec![LessThan("x".into(), 7)]),
        (
            "x=a,y!=b",
            vec![
                Equals("x".into(), "a".into()),
                NotEquals("y".into(), "b".into()),
            ],
        ),
        (
            "x=a,y!=b,z in (h,i,j)",
            vec![
                Equals("x".into(), "a".into()),
                NotEquals("y".into(), "b".into()),
                In("z".into(), strings(&["h", "i", "j"])),
            ],
        ),
        ("x notin ( )", vec![NotIn("x".into(), strings(&[""]))]),
        (
            "x notin (, a)",
            vec![NotIn("x".into(), strings(&["", "a"]))],
        ),
        ("a ", vec![exists("a")]),
        (
            "a in (x,y,notin, z,in)",
            vec![In("a".into(), strings(&["in", "notin", "x", "y", "z"]))],
        ),
        // Kubernetes' parser takes a bare key before ',' as Exists.
        ("x,y", vec![exists("x"), exists("y")]),
    ];
    for (text, want) in valid {
        let parsed = Selector::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(canonical(&parsed), want, "{text:?}");
    }
    for invalid in [
        "x=a||y=b",
        ",x,y",
        "x nott in (y)",
        "a in (xyz),",
        "a in (xyz)b notin ()",
        "a in (xyz abc)",
        "a notin(",
        "a (",
        "(",
    ] {
        assert!(
            Selector::parse(invalid).is_err(),
            "{invalid:?} must not parse"
        );
    }
}
