//! What we must compute exactly as CPython does, for lm-eval's semantics: `ast.literal_eval`
//! ([`literal`]), `repr()` ([`repr`]), the `str` predicates on CPython's Unicode tables
//! ([`unicode`]), the `str` methods and number parsing of task templates ([`str`]), the `re`
//! patterns and `re.sub` that tasks use ([`re`]), `random.Random` bit for bit ([`random`]), and
//! `str()`/`repr()` of template values as Jinja2 prints them ([`value`]).

pub mod literal;
pub mod random;
pub mod re;
pub mod repr;
pub mod str;
pub mod unicode;
pub mod value;

/// CPython's answers that `literal`, `repr` and `unicode` are tested against
/// (`tests/fixtures/python_compat/literals.json`, from `make_literals.py`).
#[cfg(test)]
fn literals_fixture() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/python_compat/literals.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("read literals.json"))
        .expect("parse literals.json")
}
