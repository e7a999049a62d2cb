//! AFL target `framing`: the property is in s3warden::fuzzing::framing.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        s3warden::fuzzing::framing(data);
    });
}
