//! The selector's own cases; `kubernetes.rs` runs apimachinery's.

mod kubernetes;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn the_issue_example_parses() {
    let s = Selector::parse("gpu,region in (eu,us),tier!=edge,!spot").expect("parses");
    assert_eq!(
        s.requirements,
        vec![
            Requirement::Exists("gpu".into()),
            Requirement::In("region".into(), vec!["eu".into(), "us".into()]),
            Requirement::NotEquals("tier".into(), "edge".into()),
            Requirement::NotExists("spot".into()),
        ]
    );
    assert_eq!(s.to_string(), "gpu,region in (eu,us),tier!=edge,!spot");
    assert_eq!(Selector::parse(&s.to_string()), Ok(s));
}

#[test]
fn all_forms_and_spacing() {
    let s = Selector::parse("  a = 1 , b==2,c!= 3, d notin ( x , y ),e in(z),f/g.h-i ")
        .expect("parses");
    assert_eq!(s.requirements.len(), 6);
    assert_eq!(s.requirements[5], Requirement::Exists("f/g.h-i".into()));
    assert_eq!(Selector::parse("").map(|s| s.requirements.len()), Ok(0));
    assert_eq!(
        Selector::parse("model=qwen3:8b").map(|s| s.requirements.len()),
        Ok(1)
    );
    // A key named like an operator is still a key.
    assert_eq!(
        Selector::parse("inside,notinx=1").map(|s| s.requirements),
        Ok(vec![
            Requirement::Exists("inside".into()),
            Requirement::Equals("notinx".into(), "1".into())
        ])
    );
}

#[test]
fn errors_name_the_position_and_what_was_expected() {
    let cases = [
        ("region in (eu,us", 16, "',' or ')'"),
        ("region in eu", 10, "'(' opening"),
        ("=x", 0, "a label or tag key"),
        ("a,,b", 2, "a label or tag key"),
        ("a>x", 2, "an integer"),
        ("a<1.5", 2, "an integer"),
        ("a= \"x\"", 3, "a value"),
        ("a b", 2, "'=', '==', '!='"),
        ("a=1 b=2", 4, "',' between requirements"),
        ("!", 1, "a label or tag key"),
        ("a in (x y)", 8, "',' or ')'"),
        ("a=\"x\"", 2, "a value"),
    ];
    let long = format!("a={}", "v".repeat(64));
    let cases = cases.into_iter().chain([(long.as_str(), 2, "at most 63")]);
    for (text, position, expected) in cases {
        let err = Selector::parse(text).expect_err(text);
        assert_eq!(err.position, position, "{text}: {err}");
        assert!(err.expected.contains(expected), "{text}: {err}");
    }
}

#[test]
fn semantics_over_labels_and_tags() {
    let l = labels(&[("region", "eu"), ("gpu", "false"), ("tier", "edge")]);
    let tags = vec!["nvidia".to_owned(), "gpu".to_owned()];
    let m = |s: &str| Selector::parse(s).expect("parses").matches(&l, &tags);
    assert!(m("nvidia"), "a tag exists");
    assert!(
        !m("gpu"),
        "a label set to false hides the tag of the same name"
    );
    assert!(m("!gpu"));
    assert!(m("nvidia=true"));
    assert!(m("region=eu") && !m("region=us"));
    assert!(m("region!=us") && m("missing!=x") && !m("region!=eu"));
    assert!(m("region in (us,eu)") && !m("region in (us)") && !m("missing in (x)"));
    assert!(m("region notin (us)") && m("missing notin (x)") && !m("region notin (eu)"));
    assert!(!m("tier!=edge"));
    assert!(m(""));
}

#[test]
fn empty_values_and_numbers() {
    let l = labels(&[
        ("note", ""),
        ("nvidia.com/gpu.count", "4"),
        ("cuda", "12.4"),
    ]);
    let tags = vec!["gpu".to_owned()];
    let m = |s: &str| Selector::parse(s).expect("parses").matches(&l, &tags);
    // A label registered with an empty value can be selected.
    assert!(m("note=") && m("note in (x,)") && !m("note!=") && m("note"));
    assert!(m("other notin ()") && !m("note notin (,x)"));
    assert!(m("nvidia.com/gpu.count>3") && !m("nvidia.com/gpu.count>4"));
    assert!(m("nvidia.com/gpu.count<5") && !m("nvidia.com/gpu.count<4"));
    // Not an integer, a tag, or absent: no numeric comparison holds.
    assert!(!m("cuda>1") && !m("gpu>0") && !m("missing<100"));
    assert!(m("nvidia.com/gpu.count>-1"));
    assert_eq!(
        Selector::parse("x>1,y<-2").map(|s| s.to_string()),
        Ok("x>1,y<-2".to_owned())
    );
}
