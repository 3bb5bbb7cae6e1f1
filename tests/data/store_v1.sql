-- A run store written by graddoctor's schema version 1 (store.py before the store/ package),
-- as `sqlite3.Connection.iterdump()` printed it: planted_trace('vanishing', depth=3, steps=3),
-- planted_history(steps=3), planted_diagnosis, one treatment. tests/test_store.py upgrades it.
PRAGMA user_version=1;
BEGIN TRANSACTION;
CREATE TABLE findings (run_id INTEGER NOT NULL, idx INTEGER NOT NULL, kind TEXT, severity TEXT,
  summary TEXT, layers TEXT, detail TEXT NOT NULL, PRIMARY KEY (run_id, idx));
INSERT INTO "findings" VALUES(1,0,'vanishing','critical','the error signal shrinks 4x per layer','["body.0.linear", "body.1.linear", "body.2.linear"]','{"kind": "vanishing", "severity": "critical", "layers": ["body.0.linear", "body.1.linear", "body.2.linear"], "summary": "the error signal shrinks 4x per layer", "evidence": {"decades": 5.4, "signal_decades": {"body.0.linear": -1.7999999999999998, "body.1.linear": -1.2, "body.2.linear": -0.6, "head": -0.0}}, "causes": [{"name": "saturating_activation", "explanation": "median gain per layer 0.25", "evidence": {"gain": 0.25, "layer": "body.0.linear"}, "score": 2.0}], "remedies": ["relu", "he_init"]}');
CREATE TABLE layer_stats (run_id INTEGER NOT NULL, step INTEGER NOT NULL, layer INTEGER NOT NULL,
  grad_norm REAL, grad_rms REAL, bias_grad_norm REAL, weight_rms REAL, update_ratio REAL, delta_rms REAL, input_grad_rms REAL, out_rms REAL, act_mean REAL, act_std REAL, act_deriv_rms REAL, saturated REAL, dead REAL, nonfinite_grad REAL, nonfinite_act REAL, PRIMARY KEY (run_id, step, layer)) WITHOUT ROWID;
INSERT INTO "layer_stats" VALUES(1,0,0,6.28941445398645826436e-02,1.38977737815828487726e-03,NULL,1.76776695296636865428e-01,NULL,2.77955475631656975452e-03,NULL,4.0,0.5,0.45,NULL,NULL,NULL,0.0,0.0);
INSERT INTO "layer_stats" VALUES(1,0,1,0.175612890077932,5.48790281493537462215e-03,NULL,1.76776695296636865428e-01,NULL,1.09758056298707492443e-02,NULL,4.0,0.5,0.45,NULL,0.6,0.0,0.0,0.0);
INSERT INTO "layer_stats" VALUES(1,0,2,7.30115558715265455802e-01,2.28161112098520454938e-02,NULL,1.76776695296636865428e-01,NULL,4.56322224197040909876e-02,NULL,4.0,0.5,0.45,NULL,0.6,0.0,0.0,0.0);
INSERT INTO "layer_stats" VALUES(1,0,3,2.84330121482928888099e+00,1.58945369921650564437e-01,NULL,1.76776695296636865428e-01,NULL,3.17890739843301128875e-01,NULL,4.0,0.5,0.45,NULL,0.6,0.0,0.0,0.0);
INSERT INTO "layer_stats" VALUES(1,1,0,0.0608482517225143,1.34456910676049616257e-03,NULL,1.76776695296636865428e-01,NULL,2.68913821352099232514e-03,NULL,4.0,0.5,0.45,NULL,NULL,NULL,0.0,0.0);
INSERT INTO "layer_stats" VALUES(1,1,1,1.80001841308174537203e-01,5.62505754088045428762e-03,NULL,1.76776695296636865428e-01,NULL,1.12501150817609085752e-02,NULL,4.0,0.5,0.45,NULL,0.6,0.0,0.0,0.0);
INSERT INTO "layer_stats" VALUES(1,1,2,7.54746318619036071773e-01,2.35858224568448772429e-02,NULL,1.76776695296636865428e-01,NULL,4.71716449136897544858e-02,NULL,4.0,0.5,0.45,NULL,0.6,0.0,0.0,0.0);
INSERT INTO "layer_stats" VALUES(1,1,3,2.96558649510944905003e+00,1.6578132490550187561e-01,NULL,1.76776695296636865428e-01,NULL,3.31562649811003751221e-01,NULL,4.0,0.5,0.45,NULL,0.6,0.0,0.0,0.0);
INSERT INTO "layer_stats" VALUES(1,2,0,0.0603390684312718,1.33331763931973201579e-03,NULL,1.76776695296636865428e-01,NULL,2.66663527863946403159e-03,NULL,4.0,0.5,0.45,NULL,NULL,NULL,0.0,0.0);
INSERT INTO "layer_stats" VALUES(1,2,1,1.65938336757503968055e-01,5.18557302367199900172e-03,NULL,1.76776695296636865428e-01,NULL,1.03711460473439980034e-02,NULL,4.0,0.5,0.45,NULL,0.6,0.0,0.0,0.0);
INSERT INTO "layer_stats" VALUES(1,2,2,6.85410525175596641034e-01,2.14190789117373950323e-02,NULL,1.76776695296636865428e-01,NULL,4.28381578234747900646e-02,NULL,4.0,0.5,0.45,NULL,0.6,0.0,0.0,0.0);
INSERT INTO "layer_stats" VALUES(1,2,3,2.83427754306840640197e+00,1.58440931335051105044e-01,NULL,1.76776695296636865428e-01,NULL,3.16881862670102210088e-01,NULL,4.0,0.5,0.45,NULL,0.6,0.0,0.0,0.0);
CREATE TABLE layers (run_id INTEGER NOT NULL, idx INTEGER NOT NULL, name TEXT NOT NULL, type TEXT,
  info TEXT NOT NULL, PRIMARY KEY (run_id, idx));
INSERT INTO "layers" VALUES(1,0,'body.0.linear','Linear','{"name": "body.0.linear", "type": "Linear", "numel": 2048, "activation": null, "out_size": 32, "in_size": 64}');
INSERT INTO "layers" VALUES(1,1,'body.1.linear','Linear','{"name": "body.1.linear", "type": "Linear", "numel": 1024, "activation": "sigmoid", "out_size": 32, "in_size": 32}');
INSERT INTO "layers" VALUES(1,2,'body.2.linear','Linear','{"name": "body.2.linear", "type": "Linear", "numel": 1024, "activation": "sigmoid", "out_size": 32, "in_size": 32}');
INSERT INTO "layers" VALUES(1,3,'head','Linear','{"name": "head", "type": "Linear", "numel": 320, "activation": "sigmoid", "out_size": 10, "in_size": 32}');
CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, created TEXT NOT NULL, kind TEXT NOT NULL,
  parent INTEGER REFERENCES runs(id), spec TEXT NOT NULL, config TEXT NOT NULL, status TEXT NOT NULL,
  writer TEXT, updated REAL, finished TEXT, verdict TEXT, final_acc REAL, history TEXT,
  diagnosis TEXT, meta TEXT);
INSERT INTO "runs" VALUES(1,'2026-12-03T19:54:47+00:00','train',NULL,'{"kind": "mlp", "depth": 3, "width": 32, "activation": "sigmoid", "init": "xavier_normal", "in_shape": [64], "out_features": 10}','{"lr": 0.1}','done','vm:9425:201374',1.79632768717593836781e+09,'2026-12-03T19:54:47+00:00','vanishing',0.1,'{"epoch": [1, 2, 3], "train_loss": [2.3, 2.3, 2.3], "train_acc": [0.1, 0.1, 0.1], "val_loss": [2.3, 2.3, 2.3], "val_acc": [0.1, 0.1, 0.1], "step_loss": [2.3, 2.3, 2.3], "diverged_at": null, "seconds": 1.5}','{"layers": ["body.0.linear", "body.1.linear", "body.2.linear", "head"], "context": {"steps": [0, 1, 2]}}','{"planted": "vanishing"}');
CREATE TABLE steps (run_id INTEGER NOT NULL, step INTEGER NOT NULL,
    loss REAL, global_grad_norm REAL, nonfinite_loss REAL,
  PRIMARY KEY (run_id, step));
INSERT INTO "steps" VALUES(1,0,2.3,2.94146665592298317548e+00,0.0);
INSERT INTO "steps" VALUES(1,1,2.3,3.06601507466231382181e+00,0.0);
INSERT INTO "steps" VALUES(1,2,2.3,2.9213170170230360334e+00,0.0);
CREATE TABLE treatments (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id INTEGER NOT NULL,
    remedy TEXT NOT NULL,
  healthy INTEGER, loss REAL, accuracy REAL, seconds REAL, payload TEXT NOT NULL, created TEXT NOT NULL);
INSERT INTO "treatments" VALUES(1,1,'relu',1,0.41,0.93,2.5,'{"spec": {"activation": "relu"}}','2026-12-03T19:54:47+00:00');
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('runs',1);
INSERT INTO "sqlite_sequence" VALUES('treatments',1);
COMMIT;
