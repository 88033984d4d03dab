// The optimizers and gradient clipping in one include.
#pragma once

#include "engine/optim/adamw.h"
#include "engine/optim/optimizer.h"
#include "engine/optim/sgd.h"
