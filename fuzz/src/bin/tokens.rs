//! AFL target `tokens`: the property is in s3warden::fuzzing::tokens.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        s3warden::fuzzing::tokens(data);
    });
}
