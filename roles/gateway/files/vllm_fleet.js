// vllm-fleet gateway: route each request by the `model` field of its JSON body (njs, in the
// distribution's nginx). Written by the gateway role; see roles/gateway/README.md.
//
// routes.js (rendered from the inventory beside this file) holds every served name, the nginx
// upstream that serves it, whether clients need a key for it, and the default model.
// nginx reads both at configuration load: a reload picks up a changed fleet.
import table from 'routes.js';

function has(name) {
    return Object.prototype.hasOwnProperty.call(table.models, name);
}

// Whether this request's Authorization header opens the model (api-keys.conf's maps).
function authorized(r, name) {
    var model = table.models[name];
    return !model.keyed || r.variables[model.upstream + '_authorized'] === '1';
}

function usable(r) {
    return Object.keys(table.models).sort().filter(function (name) {
        return authorized(r, name);
    });
}

// An OpenAI-style error body, as vLLM and the OpenAI API answer.
function fail(r, status, type, message, param) {
    r.headersOut['Content-Type'] = 'application/json';
    r.return(status, JSON.stringify({
        error: {message: message, type: type, param: param, code: status},
    }));
}

function unauthorized(r) {
    fail(r, 401, 'authentication_error', 'Unauthorized: no valid API key', null);
}

// The model a request names: its JSON body's `model`, else the default model ('' if none).
// undefined: the body names something that is not a string.
function requested(r) {
    var body = r.requestText;
    if (!body) {
        return table.default;
    }
    var parsed;
    try {
        parsed = JSON.parse(body);
    } catch (e) {
        // Not JSON (a form upload, plain text): nothing names a model.
        return table.default;
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)
        || parsed.model === undefined || parsed.model === null) {
        return table.default;
    }
    return typeof parsed.model === 'string' ? parsed.model : undefined;
}

// js_content of every path but /v1/models and the /<served name>/ prefixes. nginx has read
// the whole body into memory first (client_body_buffer_size), so the named location it is
// redirected to passes it on as it came, and can pass it again to another server on a retry.
function route(r) {
    var served = usable(r);
    if (served.length === 0) {
        return unauthorized(r);
    }
    var name = requested(r);
    if (name === undefined) {
        return fail(r, 400, 'invalid_request_error', "'model' must be a string", 'model');
    }
    if (name === '') {
        return fail(r, 400, 'invalid_request_error',
            "the request names no model ('model' in its JSON body) and the gateway has no "
            + 'default model; served: ' + served.join(', '), 'model');
    }
    if (!has(name)) {
        return fail(r, 404, 'NotFoundError',
            'The model `' + name + '` does not exist; served: ' + served.join(', '), 'model');
    }
    if (!authorized(r, name)) {
        return fail(r, 403, 'permission_error',
            'this API key does not open the model `' + name + '`; it opens: ' + served.join(', '),
            'model');
    }
    r.internalRedirect('@' + table.models[name].upstream);
}

// js_content of /v1/models: the union of what every model's servers list (its names, and
// later its adapters), limited to the models this request's key opens. One subrequest per
// model, all at once; a model none of whose servers answers is left out.
function models(r) {
    var served = usable(r);
    if (served.length === 0) {
        return unauthorized(r);
    }
    Promise.all(served.map(function (name) {
        return r.subrequest('/_vllm_fleet/models/' + table.models[name].upstream, {method: 'GET'})
            .then(function (reply) {
                if (reply.status !== 200) {
                    return [];
                }
                try {
                    return JSON.parse(reply.responseText).data || [];
                } catch (e) {
                    return [];
                }
            }, function () {
                return [];
            });
    })).then(function (lists) {
        // An instance with several names lists them all to each name's subrequest: each id
        // once, and only the ids this key opens.
        var data = [];
        var seen = {};
        lists.forEach(function (list) {
            list.forEach(function (card) {
                if (card && served.indexOf(card.id) >= 0 && !seen[card.id]) {
                    seen[card.id] = true;
                    data.push(card);
                }
            });
        });
        if (data.length === 0) {
            return fail(r, 502, 'service_unavailable', 'no server of any model answered', null);
        }
        r.headersOut['Content-Type'] = 'application/json';
        r.return(200, JSON.stringify({object: 'list', data: data}));
    });
}

export default {route: route, models: models};
