// An S3 gateway in njs, laid out like nginx's own S3 gateway (nginxinc/nginx-s3-gateway) with a
// JWT check added: every request first runs an `auth_request` subrequest that loads the AWS
// credentials, then `route` checks the HS256 token (jwt.js) and redirects to @s3, which answers
// from proxy_cache or fetches from S3 with a SigV4 signature computed here; `editHeaders` strips
// S3's own headers from every answer, cached or not.
import jwt from 'jwt.js';

var crypto = require('crypto');

var REGION = 'us-east-1';
var SIGNED_HEADERS = 'host;x-amz-content-sha256;x-amz-date';
// The SHA-256 of an empty payload: GET and HEAD carry none.
var EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

// The gateway's credentials step: environment credentials, checked on every request.
function credentials(r) {
    r.return(process.env.AWS_ACCESS_KEY_ID && process.env.AWS_SECRET_ACCESS_KEY ? 200 : 500);
}

function route(r) {
    if (jwt.check(r) !== '1') {
        r.return(401);
        return;
    }
    r.internalRedirect('@s3');
}

// `x-amz-date`: computed once per request (js_set caches it), so the header and the signature
// agree.
function awsDate(r) {
    return new Date().toISOString().replace(/[-:]|\.\d{3}/g, '');
}

function encodeSegment(segment) {
    return encodeURIComponent(segment).replace(/[!'()*]/g, function (c) {
        return '%' + c.charCodeAt(0).toString(16).toUpperCase();
    });
}

// /files/<key> → /<bucket>/<key>, each segment encoded the way SigV4 wants it.
function s3uri(r) {
    var key = r.uri.substring('/files/'.length);
    return '/' + r.variables.s3_bucket + '/' + key.split('/').map(encodeSegment).join('/');
}

function hmac(key, data) {
    return crypto.createHmac('sha256', key).update(data).digest();
}

function s3auth(r) {
    var id = process.env.AWS_ACCESS_KEY_ID;
    var secret = process.env.AWS_SECRET_ACCESS_KEY;
    var date = r.variables.awsDate;
    var day = date.substring(0, 8);
    var scope = day + '/' + REGION + '/s3/aws4_request';
    var canonical = [
        r.method,
        r.variables.s3uri,
        '',
        'host:' + r.variables.s3_host,
        'x-amz-content-sha256:' + EMPTY_SHA256,
        'x-amz-date:' + date,
        '',
        SIGNED_HEADERS,
        EMPTY_SHA256,
    ].join('\n');
    var toSign = ['AWS4-HMAC-SHA256', date, scope,
        crypto.createHash('sha256').update(canonical).digest('hex')].join('\n');
    var key = hmac(hmac(hmac(hmac('AWS4' + secret, day), REGION), 's3'), 'aws4_request');
    var signature = crypto.createHmac('sha256', key).update(toSign).digest('hex');
    return 'AWS4-HMAC-SHA256 Credential=' + id + '/' + scope + ', SignedHeaders=' +
        SIGNED_HEADERS + ', Signature=' + signature;
}

// S3's own headers say where the object lives; the gateway does not pass them on.
function editHeaders(r) {
    for (var name in r.headersOut) {
        if (name.toLowerCase().substring(0, 6) === 'x-amz-') {
            delete r.headersOut[name];
        }
    }
}

export default { credentials, route, awsDate, s3uri, s3auth, editHeaders };
