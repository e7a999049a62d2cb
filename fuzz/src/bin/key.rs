//! AFL target `key`: the property is in s3warden::fuzzing::key.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        s3warden::fuzzing::key(data);
    });
}
