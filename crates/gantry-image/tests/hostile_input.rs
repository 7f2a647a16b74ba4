//! Property tests: every parser of outside input answers malformed or
//! hostile input with an error, never a panic, and the unpacker never
//! writes outside its root whatever the bytes.

use gantry_image::dockerfile;
use gantry_image::ImageRef;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn dockerfile_parser_never_panics(src in "(FROM|RUN|COPY|ENV|ARG|LABEL|HEALTHCHECK|CMD|# escape=|[a-z]|[\\[\\]\"'\\\\ =:$\\{\\}\\n-])*") {
        let _ = dockerfile::parse(&src);
    }

    #[test]
    fn dockerfile_errors_name_a_line_within_the_file(src in "FROM scratch\n([A-Z]{2,10} [a-z \\[\\]\"=]{0,12}\n){0,6}") {
        if let Err(e) = dockerfile::parse(&src) {
            prop_assert!(e.line >= 1 && e.line <= src.lines().count().max(1), "{e} for {src:?}");
        }
    }

    #[test]
    fn word_expansion_never_panics(w in "[a-zA-Z$\\{\\}:+\\-'\"\\\\ ]{0,24}") {
        let _ = dockerfile::process_word(&w, &|k| (k == "A").then(|| "1".to_owned()));
        let _ = dockerfile::process_words(&w, &|_| None);
    }

    #[test]
    fn reference_parser_agrees_with_oci_spec(s in "([a-z0-9]{1,4}[._-]{0,2}){1,3}(/[a-z0-9._-]{1,6}){0,2}(:[a-zA-Z0-9._-]{0,5})?") {
        let ours = ImageRef::parse(&s);
        let theirs = oci_client::Reference::try_from(s.as_str());
        match (&ours, &theirs) {
            (Ok(o), Ok(t)) => prop_assert_eq!(o.inner(), t),
            (Err(_), Err(_)) => {}
            // oci-spec accepts some names Docker refuses (uppercase); we
            // never accept what it refuses.
            (Ok(o), Err(e)) => prop_assert!(false, "we accept {s:?} ({o}) which oci-spec refuses: {e}"),
            (Err(_), Ok(_)) => {}
        }
    }

    #[test]
    fn unpack_of_arbitrary_bytes_stays_inside(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("layer");
        std::fs::create_dir(&root).unwrap();
        let _ = gantry_image::unpack::unpack(&data[..], &root);
        let beside: Vec<_> = std::fs::read_dir(outer.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        prop_assert_eq!(beside, vec![std::ffi::OsString::from("layer")]);
    }

    #[test]
    fn unpack_of_hostile_tar_entries_stays_inside(
        names in proptest::collection::vec("(\\.\\./|/|[a-c]/|\\./){0,4}[a-c.]{1,3}", 1..6),
        kinds in proptest::collection::vec(0u8..4, 6),
        links in proptest::collection::vec("(\\.\\./|/|[a-c]/){0,3}[a-c]{0,2}", 6),
    ) {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("layer");
        std::fs::create_dir(&root).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (i, n) in names.iter().enumerate() {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..n.len()].copy_from_slice(n.as_bytes());
            let l = &links[i];
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
            h.set_entry_type(match kinds[i] {
                0 => tar::EntryType::Regular,
                1 => tar::EntryType::Directory,
                2 => tar::EntryType::Symlink,
                _ => tar::EntryType::Link,
            });
            h.set_size(if kinds[i] == 0 { 1 } else { 0 });
            h.set_mode(0o755);
            h.set_cksum();
            let data: &[u8] = if kinds[i] == 0 { b"x" } else { b"" };
            b.append(&h, data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let _ = gantry_image::unpack::unpack(&tar[..], &root);
        let beside: Vec<_> = std::fs::read_dir(outer.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        prop_assert_eq!(beside, vec![std::ffi::OsString::from("layer")]);
    }
}
