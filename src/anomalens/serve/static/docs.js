// The API reference, rendered in the browser from this service's own /openapi.json (FastAPI's Swagger UI and
// ReDoc load their scripts from the internet, which a line does not reach).
"use strict";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function typeOf(schema) {
  if (!schema) return "";
  if (schema.anyOf) return schema.anyOf.map(typeOf).join(" | ");
  return schema.type || (schema.$ref ? schema.$ref.split("/").pop() : "");
}

function render(spec) {
  const origin = window.location.origin;
  const intro = document.getElementById("intro");
  intro.append(el("h1", "", `${spec.info.title} ${spec.info.version}`));
  intro.append(el("p", "", (spec.info.description || "").replace(/\*\*/g, "")));
  document.getElementById("examples").textContent = [
    `curl -s ${origin}/health`,
    `curl -s --data-binary @part.png -H 'Content-Type: image/png' '${origin}/predict?name=part.png'`,
    `curl -s -F file=@part.png '${origin}/predict?heatmap=1'`,
    `curl -s -F files=@a.png -F files=@b.png ${origin}/predict/batch`,
    `# with a token: add -H 'Authorization: Bearer TOKEN'`,
  ].join("\n");

  const ops = document.getElementById("ops");
  ops.replaceChildren();
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const box = el("section", "op");
      const head = el("h3");
      head.append(el("span", "method " + method, method.toUpperCase()), el("code", "", path));
      box.append(head);
      if (op.summary) box.append(el("p", "", op.summary));
      if (op.security) box.append(el("p", "hint", "Needs the bearer token when the service has one."));
      const params = op.parameters || [];
      if (params.length) {
        const table = el("table");
        const header = el("tr");
        for (const h of ["parameter", "in", "type", "meaning"]) header.append(el("th", "", h));
        table.append(header);
        for (const p of params) {
          const row = el("tr");
          row.append(el("td", "", p.name), el("td", "", p.in), el("td", "", typeOf(p.schema)),
                     el("td", "", p.description || (p.schema && p.schema.description) || ""));
          table.append(row);
        }
        box.append(table);
      }
      if (op.requestBody) {
        const body = op.requestBody;
        box.append(el("p", "", "Body: " + Object.keys(body.content || {}).join(", ") +
                                 (body.description ? " — " + body.description : "")));
      }
      const responses = el("table");
      for (const [code, response] of Object.entries(op.responses || {})) {
        const row = el("tr");
        row.append(el("td", "", code), el("td", "", response.description || ""));
        responses.append(row);
      }
      box.append(el("div", "hint", "Responses"), responses);
      ops.append(box);
    }
  }
}

fetch("/openapi.json")
  .then((response) => response.json())
  .then(render)
  .catch((err) => { document.getElementById("ops").textContent = "cannot load /openapi.json: " + err.message; });
