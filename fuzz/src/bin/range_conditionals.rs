//! AFL target `range_conditionals`: the property is in s3warden::fuzzing::range_conditionals.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        s3warden::fuzzing::range_conditionals(data);
    });
}
