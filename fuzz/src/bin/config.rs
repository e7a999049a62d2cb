//! AFL target `config`: the property is in s3warden::fuzzing::config.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        s3warden::fuzzing::config(data);
    });
}
