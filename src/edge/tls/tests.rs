use super::name_matches;

#[test]
fn sni_names_match_exactly_or_by_one_wildcard_label() {
    // (configured name, client's SNI, exact pass, wildcard pass)
    let cases = [
        ("mirror.example.com", "mirror.example.com", true, false),
        ("mirror.example.com", "other.example.com", false, false),
        ("*.example.com", "k8s.example.com", false, true),
        ("*.example.com", "example.com", false, false),
        ("*.example.com", "a.b.example.com", false, false),
        ("*.example.com", ".example.com", false, false),
        (
            "*.mirror.example.com",
            "ghcr.mirror.example.com",
            false,
            true,
        ),
    ];
    for (name, sni, exact, wild) in cases {
        assert_eq!(name_matches(name, sni, true), exact, "{name} {sni} exact");
        assert_eq!(
            name_matches(name, sni, false),
            wild,
            "{name} {sni} wildcard"
        );
    }
}
