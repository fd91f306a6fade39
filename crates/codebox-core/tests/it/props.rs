//! Property tests of the parsers that face tenants and servers: box paths, and the JSON
//! of execution options, commands and file listings. Whatever the input, each answers a
//! value or an error, never a panic, and a path it accepts stays inside the box.

use std::path::{Component, Path};

use codebox_core::{CommandSpec, FileInfo, RunOptions, normalize_box_path};
use proptest::prelude::*;

/// Strings built from the pieces that matter to paths, plus any character at all.
fn path_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just("/".to_owned()),
        Just("\\".to_owned()),
        Just("\0".to_owned()),
        Just("//".to_owned()),
        "[a-z]{1,3}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

/// Any JSON value, numbers of every size and sign included.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let number = prop_oneof![
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(serde_json::Value::Number)),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        prop_oneof![Just(1e300), Just(1.9e19), Just(-0.0), Just(f64::MAX), Just(1.8446744073709552e19)]
            .prop_map(serde_json::Value::from),
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        number,
        ".{0,8}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("timeout".to_owned()),
                    Just("cwd".to_owned()),
                    Just("env".to_owned()),
                    Just("modified".to_owned()),
                    Just("size".to_owned()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn an_accepted_path_stays_inside_the_box(path in path_like()) {
        if let Ok(rel) = normalize_box_path(&path) {
            prop_assert!(!rel.as_os_str().is_empty());
            prop_assert!(rel.is_relative());
            prop_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))), "{rel:?}");
            prop_assert!(!rel.to_string_lossy().contains('\0'));
            // Lexically beneath any root, and stable when checked again.
            prop_assert!(Path::new("/box").join(&rel).starts_with("/box"));
            prop_assert_eq!(normalize_box_path(&rel.to_string_lossy()).unwrap(), rel);
        }
    }

    #[test]
    fn a_path_with_a_parent_step_or_a_root_is_refused(
        before in "[a-z/]{0,6}", after in "[a-z/]{0,6}", absolute in any::<bool>(),
    ) {
        let path = if absolute { format!("/{before}{after}") } else { format!("{before}/../{after}") };
        prop_assert!(normalize_box_path(&path).is_err(), "{path:?}");
    }

    #[test]
    fn any_json_for_options_commands_and_listings_is_a_value_or_an_error(value in json()) {
        let text = value.to_string();
        let _ = serde_json::from_str::<RunOptions>(&text);
        let _ = serde_json::from_str::<CommandSpec>(&text);
        let _ = serde_json::from_str::<FileInfo>(&text);
        for key in ["timeout", "modified"] {
            let wrapped = serde_json::json!({ key: value.clone(), "program": "p", "path": "a", "name": "a",
                "size": 1, "is_dir": false });
            let text = wrapped.to_string();
            let _ = serde_json::from_str::<RunOptions>(&text);
            let _ = serde_json::from_str::<CommandSpec>(&text);
            let _ = serde_json::from_str::<FileInfo>(&text);
        }
    }
}

#[test]
fn huge_and_negative_timeouts_are_refused_not_panicked_on() {
    for t in ["1e300", "1.9e19", "-1", "1.8446744073709552e19"] {
        let text = format!(r#"{{"timeout": {t}}}"#);
        assert!(serde_json::from_str::<RunOptions>(&text).is_err(), "{t}");
        let text = format!(r#"{{"program": "ls", "timeout": {t}}}"#);
        assert!(serde_json::from_str::<CommandSpec>(&text).is_err(), "{t}");
    }
}

#[test]
fn a_listing_with_an_absurd_modification_time_has_none() {
    let text = r#"{"path": "a", "name": "a", "size": 1, "is_dir": false, "modified": 1e300}"#;
    let info: FileInfo = serde_json::from_str(text).unwrap();
    assert_eq!(info.modified, None);
}
