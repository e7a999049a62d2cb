// HS256 JWT check for the nginx proxy_cache peer, the way an njs gateway does it: signature,
// algorithm and expiry, on every request. The secret is the benchmark's test secret.
var crypto = require('crypto');
var SECRET = 'bench-hmac-secret-0123456789abcdef0123';

function check(r) {
    var auth = r.headersIn['Authorization'];
    if (!auth || auth.substring(0, 7) !== 'Bearer ') {
        return '0';
    }
    var parts = auth.substring(7).split('.');
    if (parts.length !== 3) {
        return '0';
    }
    var expected = crypto.createHmac('sha256', SECRET)
        .update(parts[0] + '.' + parts[1])
        .digest('base64url');
    if (expected !== parts[2]) {
        return '0';
    }
    try {
        var header = JSON.parse(Buffer.from(parts[0], 'base64url').toString());
        var claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString());
        if (header.alg !== 'HS256' || typeof claims.exp !== 'number') {
            return '0';
        }
        return claims.exp * 1000 > Date.now() ? '1' : '0';
    } catch (e) {
        return '0';
    }
}

export default { check };
